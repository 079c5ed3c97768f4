"""The consortium's validation stop for every simulated site at once.

The rule and its reasons are in :mod:`node.gossip.validation_stop`; this wraps it around
the simulator's rows: the held-back rows of each site, the estimates mixed over W (a site
that sent nothing this round counts as the receiver's own estimate, as on a node) and the
stop heard from neighbours. The node's round does the same with its one row
(:mod:`node.learner`).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from node.gossip.validation_stop import (
    ValidationStop,
    mix_estimates,
    split_validation,
    validation_sums,
    window_rounds,
)
from node.training.trainer import LocalTrainer

Parts = list[tuple[torch.Tensor, torch.Tensor]]


class SiteValidation:
    """Each site's validation rows and the :class:`ValidationStop` of all of them."""

    def __init__(
        self, train: Parts, weights: NDArray[np.float64], patience: int, seed: int
    ) -> None:
        splits = [split_validation(x, y, seed, i) for i, (x, y) in enumerate(train)]
        self.fit: Parts = [fit for fit, _ in splits]
        self.val_x = [x for _, (x, _) in splits]
        self.val_y = [y for _, (_, y) in splits]
        self.weights = weights
        off = weights.copy()
        np.fill_diagonal(off, 0.0)
        self.adjacency = torch.from_numpy(off > 0)  # [receiver, sender]
        self.stop = ValidationStop(len(train), patience, window_rounds(weights))

    def training(self, active: torch.Tensor | None) -> torch.Tensor | None:
        """The rows that take optimizer steps this round: ``active`` and not stopped."""
        if not bool(self.stop.stopped.any()):
            return active
        live = (~self.stop.stopped).to(active.device if active is not None else "cpu")
        return live if active is None else active & live

    def after_training(self, t: int, trainer: LocalTrainer, working: NDArray[np.bool_]) -> None:
        """At a window's end, the working sites score their rows and read the estimate."""
        if not self.stop.due(t) or bool(self.stop.stopped.all()):
            return
        with torch.no_grad():
            probs = trainer.predict_own(self.val_x)
        sums = validation_sums([p.cpu() for p in probs], self.val_y)
        down = torch.from_numpy(~working).unsqueeze(1)
        self.stop.observe(t, torch.where(down, self.stop.estimate, sums))

    def stopped(self) -> NDArray[np.bool_]:
        """What this round's frames announce: each sender's stopped flag."""
        return self.stop.stopped.numpy().copy()

    def after_gossip(self, t: int, sending: NDArray[np.bool_]) -> None:
        """Mix the estimates the frames carried; stop where a neighbour said it stopped."""
        mixed = mix_estimates(self.weights, self.stop.estimate, sending)
        said = self.stop.stopped & torch.from_numpy(sending)
        heard = (self.adjacency & said.unsqueeze(0)).any(1)
        self.stop.mix(mixed, heard, t)

    def summary(self) -> dict[str, float]:
        """When the sites stopped training (the first and the last), for the results."""
        rounds = self.stop.stopped_round[self.stop.stopped]
        if not len(rounds):
            return {"stopped_sites": 0}
        return {
            "stopped_sites": len(rounds),
            "stop_first": int(rounds.min()),
            "stop_last": int(rounds.max()),
        }

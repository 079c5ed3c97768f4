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

from node.exchange.secure.validation_tail import read_tail
from node.gossip.validation_stop import (
    NOTHING_HEARD,
    Heard,
    ValidationStop,
    mix_estimates,
    split_validation,
    validation_sums,
)
from node.gossip.validation_stop import stop_plan as plan
from node.training.trainer import LocalTrainer
from sim.exchange import Announced
from sim.results import RunSpec

Parts = list[tuple[torch.Tensor, torch.Tensor]]


def stop_plan(spec: RunSpec, weights: NDArray[np.float64]) -> tuple[int | None, str]:
    """The gossip methods' validation stop for this run (:func:`plan`)."""
    private = spec.dp is not None
    return plan(spec.train.stop_patience, spec.rounds, weights, private=private)


class SiteValidation:
    """Each site's validation rows and the :class:`ValidationStop` of all of them."""

    def __init__(
        self, train: Parts, weights: NDArray[np.float64], patience: int, seed: int, window: int
    ) -> None:
        splits = [split_validation(x, y, seed, i) for i, (x, y) in enumerate(train)]
        self.fit: Parts = [fit for fit, _ in splits]
        self.val_x = [x for _, (x, _) in splits]
        self.val_y = [y for _, (_, y) in splits]
        self.weights = weights
        self.stop = ValidationStop(len(train), patience, window)

    def training(self, active: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The rows that take optimizer steps this round (on the models' ``device``):
        ``active`` and not stopped."""
        if not bool(self.stop.stopped.any()):
            return active
        live = (~self.stop.stopped).to(device)
        return live if active is None else active & live

    def after_training(self, t: int, trainer: LocalTrainer, working: NDArray[np.bool_]) -> None:
        """At a window's end, the working sites score their rows and read the estimate."""
        if not self.stop.due(t) or bool(self.stop.stopped.all()):
            return
        with torch.no_grad():
            probs = trainer.predict_own(self.val_x)
        sums = validation_sums([p.cpu() for p in probs], self.val_y)
        self.stop.observe(t, sums, torch.from_numpy(working))

    def announced(self) -> Announced:
        """What this round's parts say: each sender's stopped flag and estimate."""
        return Announced(self.stop.stopped.numpy().copy(), self.stop.estimate.numpy().copy())

    def after_gossip(
        self,
        t: int,
        said: NDArray[np.bool_],
        heard: NDArray[np.bool_],
        working: NDArray[np.bool_],
        tails: NDArray[np.float64] | None = None,
    ) -> None:
        """Mix the estimates of the frames that arrived (``heard[i, j]``; ``said``: the
        stopped flags they carried); stop where an arrived frame said its sender stopped.
        Under secure aggregation the estimates come from the sums' decrypted ``tails``,
        read as a node reads them (:func:`read_tail`), and ``heard`` is the receipts,
        which carry the stop. Sites not ``working`` this round change nothing."""
        told = (torch.from_numpy(heard) & torch.from_numpy(said).unsqueeze(0)).any(1)
        if tails is None:
            mixed = mix_estimates(self.weights, self.stop.estimate, heard & ~said[None, :])
        else:
            rows = [self._read(i, tail) for i, tail in enumerate(tails)]
            mixed = torch.stack([h.mixed(e) for h, e in zip(rows, self.stop.estimate, strict=True)])
        self.stop.mix(mixed, told, t, torch.from_numpy(working))

    def _read(self, i: int, tail: NDArray[np.float64]) -> Heard:
        neighbours = float(self.weights[i].sum() - self.weights[i, i])
        return read_tail(tail, neighbours, told=False) or NOTHING_HEARD

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

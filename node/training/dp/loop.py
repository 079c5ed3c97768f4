"""DP-SGD on a site's own training loop (``[privacy]`` with ``custom:`` data).

The same per-site guarantee as the built-in trainer (:mod:`node.training.dp.engine`): one
Opacus engine for the site's whole life, Poisson sampling, per-record clipping and noise,
the budget spread over the DP rounds and never overspent, the accountant's history in
the checkpoint and in the privacy ledger. What is the user's: the module (made private
in place: per-sample gradients through Opacus' hooks), the optimizer (wrapped in Opacus'
DP optimizer) and the loss. What is not: the sampling. Opacus' guarantee is for Poisson
sampling of records, so the loader's *dataset* is resampled by a generator seeded from
the site's secret (never the loader's own shuffling or generator); its batch size sets
the sample rate, its ``collate_fn`` is kept. A loader that is not a
:class:`torch.utils.data.DataLoader` has no dataset to sample, and is refused.

The loss must average over the batch it is given (``reduction="mean"``, the default of
``torch.nn`` losses), as Opacus' clipping assumes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from node.errors import ConfigError
from node.training.dp.engine import DpRows
from node.training.dp.row import DpRow, check_dp_model
from node.training.dp_config import DpConfig, dp_rounds
from node.training.trainer import TrainStats

if TYPE_CHECKING:
    from node.training.custom import TrainingLoop


class DpTrainingLoop(DpRows):
    """A :class:`TrainingLoop` trained with DP-SGD; the node sees a :class:`LocalTrainer`
    with the same accounting surface as :class:`node.training.dp.engine.DpTrainer`
    (``rows``, ``spent``, ``epsilon``)."""

    def __init__(self, loop: TrainingLoop, dp: DpConfig, planned_rounds: int, seed: int) -> None:
        if not isinstance(loop.loader, DataLoader):
            raise ConfigError(
                "[privacy] with your own training loop needs a torch DataLoader: DP-SGD "
                "samples records from its dataset (Poisson), which a plain iterable lacks"
            )
        if loop.optimizer is None:
            raise ConfigError("TrainingLoop.bind(seed) must run before DP is set up")
        check_dp_model(loop.model)
        self.loop, self.dp = loop, dp
        self.params, self.model, self.layout = loop.params, loop.model, loop.layout
        batch_size = loop.loader.batch_size or 1
        steps = dp_rounds(dp, planned_rounds) * loop.steps
        row = DpRow(
            loop.model,
            loop.optimizer,
            loop.loader.dataset,
            batch_size,
            loop.loss_fn,
            dp,
            steps,
            seed,
            reproducible=False,
            device=loop.device,
            collate_fn=loop.loader.collate_fn,
        )
        self.rows = [row]
        self.spent = [False]
        if dp.weight == "records":
            if dp.mean_records is None:
                raise ConfigError(
                    'dp weight = "records" needs mean_records: the consortium\'s mean training '
                    'records per site, the same figure at every site; or weight = "equal"'
                )
            scale = len(loop.loader.dataset) / dp.mean_records  # type: ignore[arg-type]
            for group in row.optimizer.param_groups:
                group["lr"] = float(group["lr"]) * scale

    def set_progress(self, fraction: float) -> None:
        self.loop.set_progress(fraction)

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        """One round of the loop's ``steps`` DP-SGD steps, unless it would overspend."""
        began = time.perf_counter()
        row, steps = self.rows[0], self.loop.steps
        loss = math.nan
        if not self.spent[0] and row.epsilon(extra_steps=steps) > self.dp.epsilon:
            self.spent[0] = True  # the next round would overspend: train no more
        if not self.spent[0]:
            self.loop.load_params()
            row.module.train()
            losses = [row.step() for _ in range(steps)]
            self.loop.store_params()
            finite = [v for v in losses if not math.isnan(v)]
            loss = sum(finite) / len(finite) if finite else math.nan
        return TrainStats(torch.tensor([loss]), steps, time.perf_counter() - began)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.loop.predict_proba(features)

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.loop.predict_own(features)

    def score(self) -> float | None:
        return self.loop.score()

"""Differential privacy per site: the built-in trainer made private by DP-SGD (Opacus).

Each site promises "our patients' records are protected to (ε, δ)" for the whole life of
the collaboration, so every trained row gets **one** :class:`opacus.PrivacyEngine` for its
whole life (a new engine per round would silently restart ε at zero), with Poisson
sampling and an RDP or PRV accountant. The clipping norm is given; the noise multiplier
is given, or derived from the target (ε, δ), the sample rate and the planned number of
steps (rounds × local steps). The accountant's history is part of the trainer state, so
a restarted node continues from the ε it had spent, never from zero.

A row whose next round would take its ε past the target is not trained again: its site
stops putting new information about its records into the model, while the gossip of
the already-private model (mixing, relaying, aggregating: post-processing) goes on.

:class:`DpRowsTrainer` wraps a trainer that keeps the flat (K, d) parameters, the
learning-rate schedule and prediction (:class:`DpTrainer`: the built-in tabular one); each
row trains in its own Opacus module and optimizer, copied in from and back to its row
every round. Mixed
precision is off for DP steps: per-sample gradients are clipped in float32.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from node.errors import ConfigError
from node.training.dp.row import DpRow, Loss, check_dp_model, mean_cross_entropy, optimizer_for
from node.training.dp_config import DpConfig, dp_rounds
from node.training.trainer import BatchedTrainer, TrainConfig, TrainStats


class DpRows:
    """What every DP trainer keeps: one :class:`DpRow` per trained row and whether its
    budget is spent; its accounting and its checkpoint state are the same for all."""

    rows: list[DpRow]
    spent: list[bool]

    def epsilon(self, row: int = 0) -> float:
        return self.rows[row].epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [r.state_dict() for r in self.rows], "spent": list(self.spent)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "rows" not in saved:
            raise ConfigError(
                "the checkpoint was written without DP: turning DP on for a model already "
                "trained without it protects nothing; start a new state_dir"
            )
        for row, raw in zip(self.rows, saved["rows"], strict=True):
            row.load_state_dict(raw)
        self.spent = [bool(s) for s in saved["spent"]]


class Inner(Protocol):
    """What DP-SGD needs of the trainer it wraps: the flat rows it trains, the model they
    are the parameters of, and the learning-rate schedule (the inner optimizer's lr)."""

    config: TrainConfig
    params: torch.Tensor
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def set_progress(self, fraction: float) -> None: ...


InnerT = TypeVar("InnerT", bound=Inner)


class DpRowsTrainer(DpRows, Generic[InnerT]):
    """DP-SGD for each row of ``inner.params``, one record set (a ``Dataset``) per row:
    the rows of a table, or a hospital's patients (:mod:`node.training.segmentation.dp`).
    Prediction and the lr schedule stay the inner trainer's.

    ``planned_rounds`` is the collaboration's length; the budget is spread over
    :func:`node.training.dp_config.dp_rounds` of them. Under ``dp.weight = "records"`` each row's
    learning rate is scaled by its records over ``mean_records`` (``dp.mean_records``
    unless given here: the simulator passes its pooled size for ``central``).

    ``seed`` seeds the Poisson sampling and noise generators. A node passes its secret
    seed (:func:`node.state.site_secrets.dp_seed`); only the simulator passes a public one, with
    ``reproducible=True``, which also hides Opacus' secure-RNG warning while it builds."""

    def __init__(
        self,
        inner: InnerT,
        records: Sequence[Dataset[Any]],
        loss: Loss,
        dp: DpConfig,
        planned_rounds: int,
        seed: int,
        mean_records: float | None = None,
        reproducible: bool = False,
    ) -> None:
        if inner.config.prox_mu > 0:
            raise ConfigError("dp with FedProx (prox_mu > 0) is not supported; set prox_mu = 0")
        check_dp_model(inner.model)
        self.inner, self.dp, self.config = inner, dp, inner.config
        self.params = inner.params
        self.model = inner.model
        steps = dp_rounds(dp, planned_rounds) * inner.config.local_steps
        device = inner.params.device
        self.rows = []
        for k, dataset in enumerate(records):
            module = copy.deepcopy(inner.model).to(device)
            self.rows.append(
                DpRow(
                    module,
                    optimizer_for(module, inner.config),
                    dataset,
                    inner.config.batch_size,
                    loss,
                    dp,
                    steps,
                    seed + 7 * k,
                    reproducible,
                    device,
                )
            )
        self.spent = [False] * len(self.rows)
        self.weights = [1.0] * len(self.rows)
        if dp.weight == "records":
            mean = mean_records if mean_records is not None else dp.mean_records
            if mean is None:
                raise ConfigError(
                    'dp weight = "records" needs mean_records: the consortium\'s mean training '
                    'records per site, the same figure at every site; or weight = "equal"'
                )
            self.weights = [len(d) / mean for d in records]  # type: ignore[arg-type]
        self.set_progress(0.0)

    @property
    def noise_multiplier(self) -> float:
        return self.rows[0].noise_multiplier

    def epsilons(self) -> list[float]:
        return [r.epsilon() for r in self.rows]

    def set_progress(self, fraction: float) -> None:
        self.inner.set_progress(fraction)
        lr = float(self.inner.optimizer.param_groups[0]["lr"])
        for row, weight in zip(self.rows, self.weights, strict=True):
            for group in row.optimizer.param_groups:
                group["lr"] = lr * weight

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        """One round for each active row whose budget allows it; the others are untouched."""
        began = time.perf_counter()
        steps = self.config.local_steps
        losses = torch.full((len(self.rows),), math.nan)
        for k, row in enumerate(self.rows):
            if (active is not None and not bool(active[k])) or self.spent[k]:
                continue
            if row.epsilon(extra_steps=steps) > self.dp.epsilon:
                self.spent[k] = True  # the next round would overspend: train no more
                continue
            params = list(row.module.parameters())
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(self.params[k], params)
            batch_losses = [row.step() for _ in range(steps)]
            with torch.no_grad():
                self.params[k].copy_(torch.nn.utils.parameters_to_vector(params))
            finite = [v for v in batch_losses if not math.isnan(v)]
            losses[k] = sum(finite) / len(finite) if finite else math.nan
        return TrainStats(losses, steps, time.perf_counter() - began)


class DpTrainer(DpRowsTrainer[BatchedTrainer]):
    """DP-SGD for the built-in trainer: each row's records are its site's table rows."""

    def __init__(
        self,
        inner: BatchedTrainer,
        parts: list[tuple[torch.Tensor, torch.Tensor]],
        dp: DpConfig,
        planned_rounds: int,
        seed: int,
        mean_records: float | None = None,
        reproducible: bool = False,
    ) -> None:
        device = inner.params.device
        records = [TensorDataset(x.to(device), y.to(device)) for x, y in parts]
        super().__init__(
            inner, records, mean_cross_entropy, dp, planned_rounds, seed, mean_records, reproducible
        )

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner.predict_proba(features)

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.inner.predict_own(features)

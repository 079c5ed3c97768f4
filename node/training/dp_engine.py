"""Differential privacy per site: DP-SGD through Opacus (the one module that imports it).

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

:class:`DpTrainer` wraps a :class:`~node.training.trainer.BatchedTrainer`, which keeps the flat
(K, d) parameters, the learning-rate schedule and prediction; each row trains in its own
Opacus module and optimizer, copied in from and back to its row every round. Mixed
precision is off for DP steps: per-sample gradients are clipped in float32.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from node.errors import ConfigError
from node.training.dp_config import DpConfig, dp_rounds
from node.training.trainer import BatchedTrainer, TrainConfig, TrainStats

# Opacus' RDP conversion warns when the best order is its largest; the bound it returns
# is then a little loose, never too small; and autograd warns about hooks on a first
# layer whose input needs no gradient. Neither is about privacy. Opacus' secure-RNG
# warning is *not* silenced here: only a caller that seeds on purpose (the simulator,
# ``reproducible=True``) hides it, and only while it builds its engines.
QUIET = ("Optimal order is the largest alpha", "Full backward hook")
SECURE_RNG_WARNING = "Secure RNG turned off"


@functools.cache
def quiet_opacus() -> None:
    """Silence :data:`QUIET`, once, when DP is first used (never on import).

    Process-wide, because training runs in worker threads and ``catch_warnings`` is not
    thread-safe; a process that never trains with DP keeps every warning."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def check_dp_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot compute per-sample gradients for, saying why."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(str(e) for e in errors)
        raise ConfigError(
            f"this model cannot be trained with DP-SGD: {reasons}. Per-sample gradients "
            "need layers Opacus supports; use nn.GroupNorm or nn.LayerNorm for normalisation"
        )


@functools.lru_cache(maxsize=256)
def _noise_for(epsilon: float, delta: float, sample_rate: float, steps: int, kind: str) -> float:
    """σ for a target (ε, δ) after ``steps`` Poisson steps; sites of equal size share it."""
    sigma = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=kind,
    )
    return float(sigma)


class Ledger:
    """ε of an accountant history ``[(σ, q, steps), ...]`` at δ: Opacus' own analysis,
    cached. For RDP each (σ, q) gets its per-step RDP curve once and a history costs a
    weighted sum of them (as in Opacus' accountant); a fresh accountant per query would
    cost ~0.2 s, more than a round of training. The history, not today's config, is what
    was spent: a site restarted with other settings is charged for what it really did."""

    def __init__(self, kind: str, noise_multiplier: float, sample_rate: float, delta: float):
        quiet_opacus()
        self.kind, self.sigma, self.q, self.delta = kind, noise_multiplier, sample_rate, delta
        self._curves: dict[tuple[float, float], np.ndarray[Any, np.dtype[np.float64]]] = {}

    def _curve(self, sigma: float, q: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        curve = self._curves.get((sigma, q))
        if curve is None:
            step = rdp_analysis.compute_rdp(
                q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
            )
            curve = self._curves[(sigma, q)] = np.asarray(step, dtype=np.float64)
        return curve

    def of_history(self, history: list[tuple[float, float, int]]) -> float:
        """ε after every (σ, q, steps) of ``history``."""
        history = [(float(sig), float(q), int(n)) for sig, q, n in history if int(n) > 0]
        if not history:
            return 0.0
        return self._of(tuple(history))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one ledger per row, for its life
    def _of(self, history: tuple[tuple[float, float, int], ...]) -> float:
        if self.kind == "rdp":
            rdp = sum(self._curve(sig, q) * n for sig, q, n in history)
            eps, _ = rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=self.delta
            )
            return float(eps)
        accountant = create_accountant(mechanism=self.kind)
        accountant.history = list(history)
        return float(accountant.get_epsilon(delta=self.delta))

    def epsilon(self, steps: int) -> float:
        """ε after ``steps`` steps at this ledger's own (σ, q)."""
        return self.of_history([(self.sigma, self.q, steps)])

    def max_steps(self, epsilon: float) -> int:
        """The most steps whose ε stays within ``epsilon``."""
        lo, hi = 0, 1
        while self.epsilon(hi) <= epsilon:
            lo, hi = hi, hi * 2
            if hi > 1 << 40:
                return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epsilon(mid) <= epsilon else (lo, mid)
        return lo


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the batch drawn (0 for an empty Poisson batch)."""
    return nn.functional.cross_entropy(logits, labels, reduction="sum") / max(len(labels), 1)


class _Row:
    """One trained row: its Opacus module, DP optimizer, Poisson loader and accountant.

    ``module`` and ``optimizer`` are made private in place (the built-in trainer passes a
    copy of its model, a custom loop its own); the Poisson sampler draws from ``dataset``
    with this row's secret generator, never from any generator of the caller's."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Dataset[Any],
        batch_size: int,
        loss: Loss,
        dp: DpConfig,
        planned_steps: int,
        seed: int,
        reproducible: bool,
        device: torch.device,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        records = len(dataset)  # type: ignore[arg-type]
        if records == 0:
            raise ConfigError("DP-SGD needs training records; this site's dataset is empty")
        if dp.delta >= 1.0 / records:
            raise ConfigError(
                f"dp delta {dp.delta:g} is not below 1/(local dataset size) = 1/{records}: "
                "such a δ allows publishing a whole record outright; choose δ < 1/n"
            )
        self.dp, self.loss, self.device = dp, loss, device
        self.sample_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
        loader = DataLoader(
            dataset, batch_size=batch_size, generator=self.sample_gen, collate_fn=collate_fn
        )
        self.sample_rate = 1.0 / len(loader)
        quiet_opacus()
        self.noise_multiplier = dp.noise_multiplier or _noise_for(
            dp.epsilon, dp.delta, self.sample_rate, max(planned_steps, 1), dp.accountant
        )
        self.ledger = Ledger(dp.accountant, self.noise_multiplier, self.sample_rate, dp.delta)
        try:
            with warnings.catch_warnings():
                if reproducible:
                    warnings.filterwarnings("ignore", message=SECURE_RNG_WARNING)
                self.engine = PrivacyEngine(accountant=dp.accountant, secure_mode=dp.secure_mode)
        except ImportError as exc:
            raise ConfigError(f"dp secure_mode: {exc}") from None
        made = self.engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=dp.clip,
            poisson_sampling=True,
            noise_generator=None if dp.secure_mode else self.noise_gen,
        )
        wrapped, dp_optimizer, dp_loader = made
        assert isinstance(wrapped, GradSampleModule) and isinstance(dp_optimizer, DPOptimizer)
        self.module, self.optimizer, self.loader = wrapped, dp_optimizer, dp_loader
        self.batches = iter(self.loader)

    @property
    def steps_taken(self) -> int:
        """DP-SGD steps the engine's accountant has recorded (restored with it)."""
        return sum(int(steps) for _, _, steps in self.engine.accountant.history)

    def epsilon(self, extra_steps: int = 0) -> float:
        """ε spent so far, read off the accountant's history (what was really done), or
        after ``extra_steps`` more steps at this row's settings."""
        history = [(float(sig), float(q), int(n)) for sig, q, n in self.engine.accountant.history]
        if extra_steps:
            history.append((self.noise_multiplier, self.sample_rate, extra_steps))
        return self.ledger.of_history(history)

    def pinned(self) -> dict[str, Any]:
        """The DP parameters ε was spent under; a restart must keep every one of them."""
        return {
            "epsilon": self.dp.epsilon,
            "delta": self.dp.delta,
            "clip": self.dp.clip,
            "accountant": self.dp.accountant,
            "sample_rate": self.sample_rate,
            "weight": self.dp.weight,
            "mean_records": self.dp.mean_records,
        }

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x, y = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x, y = next(self.batches)
        if x.device != self.device or y.device != self.device:  # a custom loop: CPU data
            x, y = x.to(self.device), y.to(self.device)
        return x, y

    def step(self) -> float:
        """One DP-SGD step on a Poisson-sampled batch (possibly empty: the noise is still
        added and the step still counted, as the accountant assumes)."""
        x, y = self._batch()
        self.optimizer.zero_grad(set_to_none=True)
        outputs: torch.Tensor = self.module(x)
        # An empty batch still runs backward (zero per-sample gradients), whatever the loss
        # would make of no records; the step's noise is what the accountant counts.
        if outputs.dtype != torch.float32:
            outputs = outputs.float()
        loss = self.loss(outputs, y) if len(y) else outputs.sum() * 0.0
        torch.autograd.backward([loss])
        self.optimizer.step()
        return float(loss.detach()) if len(y) else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.engine.accountant.state_dict(),
            "optimizer": self.optimizer.original_optimizer.state_dict(),
            "sample_gen": self.sample_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "noise_multiplier": self.noise_multiplier,
            "pinned": self.pinned(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        pinned, now = saved.get("pinned"), self.pinned()
        if pinned is None:
            raise ConfigError(
                "the checkpoint does not record the DP parameters its budget was spent "
                "under (written by an older Murmur); start a new state_dir"
            )
        changed = [f"{k} {pinned[k]!r} → {now[k]!r}" for k in now if pinned.get(k) != now[k]]
        if changed:
            raise ConfigError(
                "DP parameters changed since this site started spending its budget ("
                + "; ".join(changed)
                + "): ε is only meaningful for the parameters it was spent under. Restore "
                "them in [privacy] (and the site's data), or start a new state_dir and a new "
                "budget"
            )
        self.engine.accountant.load_state_dict(saved["accountant"])
        self.optimizer.original_optimizer.load_state_dict(saved["optimizer"])
        self.sample_gen.set_state(saved["sample_gen"])
        self.noise_gen.set_state(saved["noise_gen"])
        self.noise_multiplier = float(saved["noise_multiplier"])  # the σ ε was spent at
        self.optimizer.noise_multiplier = self.noise_multiplier
        self.ledger = Ledger(
            self.dp.accountant, self.noise_multiplier, self.sample_rate, self.dp.delta
        )
        self.batches = iter(self.loader)


def _optimizer(module: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        module.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
    )


class DpRows:
    """What every DP trainer keeps: one :class:`_Row` per trained row and whether its
    budget is spent; its accounting and its checkpoint state are the same for all."""

    rows: list[_Row]
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


class DpTrainer(DpRows):
    """DP-SGD for each row of ``inner.params``; prediction and the lr schedule are inner's.

    ``planned_rounds`` is the collaboration's length; the budget is spread over
    :func:`node.training.dp_config.dp_rounds` of them. Under ``dp.weight = "records"`` each row's
    learning rate is scaled by its records over ``mean_records`` (``dp.mean_records``
    unless given here: the simulator passes its pooled size for ``central``).

    ``seed`` seeds the Poisson sampling and noise generators. A node passes its secret
    seed (:func:`node.state.site_secrets.dp_seed`); only the simulator passes a public one, with
    ``reproducible=True``, which also hides Opacus' secure-RNG warning while it builds."""

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
        if inner.config.prox_mu > 0:
            raise ConfigError("dp with FedProx (prox_mu > 0) is not supported; set prox_mu = 0")
        check_dp_model(inner.model)
        self.inner, self.dp, self.config = inner, dp, inner.config
        self.params = inner.params
        self.model = inner.model
        steps = dp_rounds(dp, planned_rounds) * inner.config.local_steps
        device = inner.params.device
        self.rows = []
        for k, (x, y) in enumerate(parts):
            module = copy.deepcopy(inner.model).to(device)
            self.rows.append(
                _Row(
                    module,
                    _optimizer(module, inner.config),
                    TensorDataset(x.to(device), y.to(device)),
                    inner.config.batch_size,
                    mean_cross_entropy,
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
            self.weights = [len(y) / mean for _, y in parts]
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

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner.predict_proba(features)

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.inner.predict_own(features)

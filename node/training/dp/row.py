"""One DP-trained row: its Opacus module, DP optimizer, Poisson loader and accountant.

Shared by the built-in trainer (:class:`node.training.dp.engine.DpTrainer`, one row per
site's model in a batch) and by a site's own loop (:mod:`node.training.dp.loop`): both
hand a row a module, an optimizer, a dataset and a loss, and the row makes them private
with one :class:`opacus.PrivacyEngine` for its whole life.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from node.errors import ConfigError
from node.training.dp.accounting import Ledger, noise_for, quiet_opacus
from node.training.dp_config import DpConfig
from node.training.trainer import TrainConfig

SECURE_RNG_WARNING = "Secure RNG turned off"


def check_dp_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot compute per-sample gradients for, saying why."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(str(e) for e in errors)
        raise ConfigError(
            f"this model cannot be trained with DP-SGD: {reasons}. Per-sample gradients "
            "need layers Opacus supports; use nn.GroupNorm or nn.LayerNorm for normalisation"
        )


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the batch drawn (0 for an empty Poisson batch)."""
    return nn.functional.cross_entropy(logits, labels, reduction="sum") / max(len(labels), 1)


class DpRow:
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
        self.noise_multiplier = dp.noise_multiplier or noise_for(
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
        if len(y) == 0:
            # No records: zero per-sample gradients, without a forward pass (a U-Net's
            # instance norm cannot take an empty batch); the step's noise is what the
            # accountant counts.
            for p in self.module.parameters():
                if p.requires_grad:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            self.optimizer.step()
            return math.nan
        outputs: torch.Tensor = self.module(x)
        if outputs.dtype != torch.float32:
            outputs = outputs.float()
        loss = self.loss(outputs, y)
        torch.autograd.backward([loss])
        self.optimizer.step()
        return float(loss.detach())

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


def optimizer_for(module: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        module.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
    )

"""Local training of K models stored as rows of one flat (K, d) tensor.

A site trains K = 1 model; the in-process simulator trains all N nodes' models at once
with ``torch.func.vmap``, which is what makes 1,000 simulated nodes affordable on two
cores. Rows never interact: the loss is a sum of per-row losses, and every supported
optimizer (SGD with optional Nesterov momentum, Adam) is element-wise, so each row's
update is exactly what that node would compute alone.

FedProx adds μ/2‖x − x_start‖² to each node's loss (x_start: the model at the start of
the round), pulling local steps toward the last mixed model on heterogeneous data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call, vmap

from node.errors import ConfigError
from node.training.device import autocast_for
from node.training.flat import FlatLayout
from node.training.sampling import uniforms

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How each node trains locally in one round.

    These defaults are the only ones: the node's ``[train]`` section, ``murmur sim``'s flags
    and the consortium writer all read them from here (SGD at 0.3, batch 16, one step: the
    settings the convergence matrix measures).
    """

    # "toml_doc": the comment node.config writes beside each key of [train].
    optimizer: str = field(default="sgd", metadata={"toml_doc": "sgd or adam"})
    lr: float = field(default=0.3, metadata={"toml_doc": "learning rate"})
    momentum: float = field(default=0.0, metadata={"toml_doc": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"toml_doc": "Nesterov (sgd, momentum > 0)"})
    weight_decay: float = field(default=0.0, metadata={"toml_doc": "L2 weight decay"})
    prox_mu: float = field(default=0.0, metadata={"toml_doc": "FedProx μ (0: off)"})
    local_steps: int = field(default=1, metadata={"toml_doc": "optimizer steps per round"})
    batch_size: int = field(default=16, metadata={"toml_doc": "records per step"})
    time_budget_s: float | None = field(
        default=None, metadata={"toml_doc": "seconds of training per round, instead of steps"}
    )
    lr_schedule: str = field(
        default="cosine", metadata={"toml_doc": "cosine (over the planned rounds) or constant"}
    )
    stop_patience: int = field(
        default=50,
        metadata={
            "toml_doc": "stop training (mixing goes on) after N rounds without a better "
            "consortium validation loss; 0: never (node.gossip.validation_stop)"
        },
    )

    def __post_init__(self) -> None:
        problems = [
            message
            for bad, message in (
                (
                    self.lr_schedule not in SCHEDULES,
                    f"unknown lr schedule {self.lr_schedule!r}; accepted: {', '.join(SCHEDULES)}",
                ),
                (
                    self.optimizer not in OPTIMIZERS,
                    f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}",
                ),
                (not self.lr > 0, f"lr must be positive, got {self.lr}"),
                (self.local_steps < 1, f"local_steps must be at least 1, got {self.local_steps}"),
                (self.batch_size < 1, f"batch_size must be at least 1, got {self.batch_size}"),
                (self.momentum < 0, f"momentum must be >= 0, got {self.momentum}"),
                (self.weight_decay < 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
                (
                    self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0),
                    "nesterov needs optimizer 'sgd' with momentum > 0",
                ),
                (self.prox_mu < 0, "prox_mu (FedProx μ) must be >= 0"),
                (
                    self.stop_patience != 0 and self.stop_patience < 10,
                    f"stop_patience must be 0 (never stop) or at least 10 rounds, "
                    f"got {self.stop_patience}",
                ),
                (
                    self.time_budget_s is not None and not self.time_budget_s > 0,
                    f"time_budget_s must be positive, got {self.time_budget_s}",
                ),
            )
            if bad
        ]
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class StackedData:
    """Each node's training rows inside one tensor: node i owns rows offsets[i]:+counts[i]."""

    features: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_parts(
        cls, parts: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
    ) -> StackedData:
        if any(len(y) == 0 for _, y in parts):
            raise ConfigError("every node needs at least one training example")
        counts = torch.tensor([len(y) for _, y in parts])
        offsets = torch.cumsum(counts, 0) - counts
        features = torch.cat([x for x, _ in parts]).to(device)
        labels = torch.cat([y for _, y in parts]).to(device)
        return cls(features, labels, offsets.to(device), counts.to(device))

    def sample(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (K, batch) minibatch per node, drawn uniformly with replacement: row k's
        records picked by the uniforms ``u[k]`` (node.training.sampling)."""
        u = u.to(self.counts.device)
        rows = self.offsets.unsqueeze(1) + (u * self.counts.unsqueeze(1)).long()
        return self.features[rows], self.labels[rows]


@dataclass(frozen=True)
class TrainStats:
    loss: torch.Tensor  # (K,) mean training loss of each node this round
    steps: int
    seconds: float


class Trainer(Protocol):
    """What gossip needs of a local trainer: K models as the rows of ``params``, trained
    in place a round at a time (classifiers below; segmentation models in
    :mod:`node.training.segmentation.trainer`)."""

    params: torch.Tensor

    def set_progress(self, fraction: float) -> None: ...

    def train(self, active: torch.Tensor | None = None) -> TrainStats: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, saved: dict[str, Any]) -> None: ...


@runtime_checkable
class LocalTrainer(Trainer, Protocol):
    """A classifier's trainer, as a node scores it: plain (:class:`BatchedTrainer`) or
    DP-SGD (:class:`node.training.dp.engine.DpTrainer`, a wrapper around one)."""

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor: ...

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]: ...


def make_optimizer(params: torch.Tensor, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over the flat (K, d) ``params``: element-wise, so
    each row moves as that site's own optimizer would move it."""
    if config.optimizer == "adam":
        return torch.optim.Adam([params], lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        [params],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def set_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, fraction: float) -> None:
    """The learning rate at ``fraction`` (0..1) of the planned run: cosine decays it to 0.

    Decentralized SGD with a constant step keeps nodes a step-size-dependent distance
    apart on heterogeneous data; decaying it lets gossip pull them to consensus.
    """
    factor = 1.0
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = config.lr * factor


def train_round(step: Callable[[], torch.Tensor], config: TrainConfig) -> TrainStats:
    """A round's optimizer steps: ``local_steps`` of them, or as many as fit in the time
    budget; ``step`` returns the (K,) losses of one."""
    began = time.perf_counter()
    losses = []
    budget = config.time_budget_s
    while True:
        with torch.enable_grad():
            losses.append(step())
        elapsed = time.perf_counter() - began
        if (budget is None and len(losses) >= config.local_steps) or (
            budget is not None and elapsed >= budget
        ):
            break
    return TrainStats(torch.stack(losses).mean(0), len(losses), time.perf_counter() - began)


class BatchedTrainer:
    """Trains the rows of ``params`` in place; optimizer state lives for the trainer's life."""

    def __init__(
        self,
        model: nn.Module,
        params: torch.Tensor,
        data: StackedData,
        config: TrainConfig,
        seed: int = 0,
        first_row: int = 0,
    ) -> None:
        """Row k is site ``first_row + k``: its batches are a function of (``seed``, site,
        step) (:mod:`node.training.sampling`), so a node (one row, ``first_row`` its
        index) and the simulator's row for that site draw the same ones."""
        self.model = model
        self.layout = FlatLayout.of(model)
        if params.dim() != 2 or params.shape[1] != self.layout.dim:
            raise ValueError(f"params must be (K, {self.layout.dim}), got {tuple(params.shape)}")
        if len(data.counts) != params.shape[0]:
            raise ValueError(f"{params.shape[0]} models but data for {len(data.counts)} nodes")
        self.params = params
        self.data = data
        self.config = config
        self.device = params.device
        self.seed = seed
        self.sites = torch.arange(first_row, first_row + params.shape[0])
        self.draws = 0  # batches drawn so far, by every row
        self._plain_sgd = (
            config.optimizer == "sgd"
            and config.momentum == 0.0
            and config.weight_decay == 0.0
            and config.prox_mu == 0.0
        )
        # The flat grad buffer feeds torch.optim; plain SGD steps without it.
        self._grad = torch.zeros(0) if self._plain_sgd else torch.zeros_like(params)
        if not self._plain_sgd:
            self.params.grad = self._grad
        self.optimizer = make_optimizer(params, config)
        self._forward = vmap(self._single_forward)

    def _single_forward(
        self, flat_params: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = functional_call(self.model, flat_params, (x,))
        return out

    def _step(self, active: torch.Tensor | None, start: torch.Tensor | None) -> torch.Tensor:
        x, y = self.data.sample(uniforms(self.seed, self.sites, self.draws, self.config.batch_size))
        self.draws += 1
        leaves = {
            n: v.detach().requires_grad_(True) for n, v in self.layout.views(self.params).items()
        }
        with autocast_for(self.device):
            logits = self._forward(leaves, x)
        per_example = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
        ).view(y.shape)
        per_node = per_example.mean(dim=1)
        grads = torch.autograd.grad(per_node.sum(), list(leaves.values()))
        if self._plain_sgd:
            # Plain SGD: step each parameter view straight from its gradient, skipping the
            # (K, d) grad buffer and the optimizer's second pass over it.
            lr = float(self.optimizer.param_groups[0]["lr"])
            for view, grad in zip(self.layout.views(self.params).values(), grads, strict=True):
                if active is not None:
                    grad = grad * active.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
                view.add_(grad, alpha=-lr)
            return per_node.detach()
        for view, grad in zip(self.layout.views(self._grad).values(), grads, strict=True):
            view.copy_(grad)
        if start is not None:
            self._grad.add_(self.params - start, alpha=self.config.prox_mu)
        frozen = None if active is None else self.params[~active].clone()
        self.optimizer.step()
        if active is not None and frozen is not None:
            self.params[~active] = frozen
        return per_node.detach()

    def set_progress(self, fraction: float) -> None:
        """Where we are in the planned run (0..1): the cosine schedule decays lr to 0 at 1."""
        set_schedule(self.optimizer, self.config, fraction)

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        """One round of local training; rows where ``active`` is False are left untouched."""
        start = self.params.detach().clone() if self.config.prox_mu > 0 else None
        return train_round(lambda: self._step(active, start), self.config)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue training exactly: sampler and optimizer."""
        return {"draws": self.draws, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        # A checkpoint from before counter-based sampling holds a generator's state,
        # which says nothing about the counter: such a site draws its batches afresh.
        self.draws = int(saved.get("draws", 0))
        self.optimizer.load_state_dict(saved["optimizer"])

    def _probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """(K, T, C) probabilities of row k's model on ``inputs[k]``, in chunks of 256 rows."""
        views = self.layout.views(self.params)
        chunks = []
        for lo in range(0, self.params.shape[0], 256):
            part = {n: v[lo : lo + 256] for n, v in views.items()}
            with autocast_for(self.device):
                logits = self._forward(part, inputs[lo : lo + 256])
            chunks.append(torch.softmax(logits.float(), dim=-1))
        return torch.cat(chunks)

    @torch.no_grad()
    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Row i's class probabilities on its own examples ``features[i]``, batched over rows."""
        longest = max(len(f) for f in features)
        padded = torch.zeros(len(features), longest, features[0].shape[1], device=self.device)
        for i, f in enumerate(features):
            padded[i, : len(f)] = f.to(self.device)
        probs = self._probabilities(padded)
        return [probs[i, : len(f)] for i, f in enumerate(features)]

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(K, T, C) class probabilities of every model on the same T examples."""
        return self._probabilities(features.unsqueeze(0).expand(self.params.shape[0], -1, -1))

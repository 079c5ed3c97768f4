"""Bring your own PyTorch training: any ``nn.Module``, data loader, loss and optimizer.

A hospital's ML staff often have a training loop that works on their data already. A
:class:`TrainingLoop` wraps it as a Murmur site's local step, in about ten lines::

    from node.training.custom import TrainingLoop, run_site

    loop = TrainingLoop(
        MyNet,                                         # builds any nn.Module, no BatchNorm
        DataLoader(my_dataset, batch_size=32, shuffle=True),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        steps=10,                                      # batches per round
        evaluate=lambda m: my_validation_accuracy(m),  # optional, logged each round
    )
    run_site("site.toml", loop)                        # or Node(config, loop=loop)

Everything else applies unchanged: the site's ``site.toml`` (``[data] source =
"custom:NAME"``) chooses the consortium, topology, compressor, step size and secure
aggregation; the node compresses and gossips the model's parameters as one flat vector
after each round's ``steps`` batches, and the mixed model is written back into the
module before the next. A ``[privacy]`` section trains your loop with DP-SGD
(:mod:`node.training.dp.loop`): your module, optimizer and loss, made private by Opacus,
with records Poisson-sampled from your loader's dataset by a secret generator (so the
loader must be a ``DataLoader``, and the loss average over its batch).

Every site must start from the same model, which gossip assumes (x̂₀ is known to all).
Pass ``model`` as a function that builds it (``TrainingLoop(MyNet, …)``): it is called
under the consortium's public seed on the CPU, so the same code gives the same start at
every site whatever it creates. A module already built is re-initialised layer by layer
with each layer's ``reset_parameters`` (:func:`seeded_init`); parameters that no
``reset_parameters`` covers keep this site's own values, so prefer the function.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from node.errors import ConfigError
from node.training.device import autocast_for
from node.training.flat import FlatLayout
from node.training.trainer import TrainStats

Batch = tuple[torch.Tensor, torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def seeded_init(model: nn.Module, seed: int) -> None:
    """Re-initialise every layer that can (``reset_parameters``) from ``seed``, in order,
    on the CPU generator; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def seeded_build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` under ``seed`` on the CPU: the same code gives the same parameters at
    every site, whatever it creates (a bare ``nn.Parameter(torch.randn(…))`` too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            return factory()


class TrainingLoop:
    """Your module, loader, loss and optimizer as a site's :class:`LocalTrainer`."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        loader: Iterable[Batch],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: OptimizerFactory,
        steps: int = 1,
        evaluate: Callable[[nn.Module], float] | None = None,
        device: torch.device | None = None,
    ) -> None:
        if steps < 1:
            raise ConfigError(f"TrainingLoop steps must be at least 1, got {steps}")
        self.factory = None if isinstance(model, nn.Module) else model
        self.model = model if isinstance(model, nn.Module) else model()
        self.layout = FlatLayout.of(self.model)  # refuses BatchNorm: per-site state
        self.loader = loader
        self.loss_fn = loss_fn
        self.make_optimizer = optimizer
        self.steps = steps
        self.evaluate = evaluate
        self.device = device or next(self.model.parameters()).device
        self.params = torch.zeros(0)  # set by bind(): the node's x, one row
        self.optimizer: torch.optim.Optimizer | None = None
        self.progress = 0.0  # where the planned run is (0..1), for your own schedule
        self._batches: Iterator[Batch] = iter(())

    def bind(self, seed: int) -> torch.Tensor:
        """Start from the consortium's common model; returns x₀ (the flat vector)."""
        if self.factory is not None:
            self.model = seeded_build(self.factory, seed)
        else:
            seeded_init(self.model, seed)
        self.model.to(self.device)
        x0 = self.layout.to_vector(self.model).to("cpu")
        self.params = x0.unsqueeze(0).clone()
        self.optimizer = self.make_optimizer(self.model.parameters())
        return x0

    # -- LocalTrainer -------------------------------------------------------------------------

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def _next_batch(self) -> Batch:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)  # a new epoch (a shuffling loader reshuffles)
            for batch in itertools.islice(self._batches, 1):
                return batch
            raise ConfigError("the training loader yields no batches") from None

    def load_params(self) -> None:
        """The node's x (mixed by gossip) into the module's own parameters."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, view in self.layout.views(self.params).items():
                params[name].copy_(view[0].to(params[name].device, params[name].dtype))

    def store_params(self) -> None:
        """The module's parameters (after local steps) into the node's x."""
        with torch.no_grad():
            self.params[0].copy_(self.layout.to_vector(self.model).to(self.params.device))

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        if self.optimizer is None:
            raise ConfigError("TrainingLoop.bind(seed) must run before training")
        began = time.perf_counter()
        self.load_params()
        self.model.train()
        losses = []
        for _ in range(self.steps):
            inputs, labels = self._next_batch()
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast_for(self.device):
                outputs = self.model(inputs)
            loss = self.loss_fn(outputs.float(), labels)
            torch.autograd.backward(loss)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.store_params()
        mean = torch.tensor([sum(losses) / len(losses)])
        return TrainStats(mean, self.steps, time.perf_counter() - began)

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        self.load_params()
        self.model.eval()
        out = self.model(features.to(self.device)).float()
        return torch.softmax(out, dim=-1).unsqueeze(0).cpu()

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.predict_proba(f)[0] for f in features]

    def score(self) -> float | None:
        """Your ``evaluate`` on the current (mixed) model, if you gave one."""
        if self.evaluate is None:
            return None
        self.load_params()
        self.model.eval()
        with torch.no_grad():
            return float(self.evaluate(self.model))

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.optimizer is not None and saved.get("optimizer") is not None:
            self.optimizer.load_state_dict(saved["optimizer"])


def run_site(config_path: str | Path, loop: TrainingLoop) -> dict[str, Any]:
    """Run this site's node from ``site.toml`` with ``loop`` as its local training."""
    import asyncio

    from node.config import load_config
    from node.runtime import Node

    config = load_config(Path(config_path))
    return asyncio.run(Node(config, loop=loop).run())

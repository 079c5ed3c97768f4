"""Local training of K sites' segmentation models, stored as rows of one (K, d) tensor.

The same contract as :class:`node.training.trainer.BatchedTrainer` (a site trains K = 1
row, the simulator every site's row), so gossip, compression, encryption and checkpoints
treat a U-Net exactly as they treat a table's MLP. A U-Net's forward pass is large
enough that batching sites buys nothing on a CPU, so the rows train one after another,
each through ``functional_call`` on its own slice of the flat tensor; one optimizer
step then updates every row (SGD and Adam are element-wise: each row moves exactly as
that site's own optimizer would move it).

Each step, a site draws ``batch_size`` patches from its cases (towards the tumour,
:mod:`node.training.brats.patches`) and augments each (:mod:`.augment`); both draws are
seeded from (public seed, site, step), so a node and the simulator train a site alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from node.training.brats.patches import sample_patches
from node.training.brats.volumes import Case
from node.training.device import autocast_for
from node.training.flat import FlatLayout
from node.training.sampling import draw_seed
from node.training.segmentation.augment import augment
from node.training.segmentation.inference import predict_labels
from node.training.segmentation.metrics import RegionScores, score_case, segmentation_loss
from node.training.trainer import (
    TrainConfig,
    Trainer,
    TrainStats,
    make_optimizer,
    set_schedule,
    train_round,
)

PATCH_STREAM, AUGMENT_STREAM = 2, 3
T = TypeVar("T")


def training_patch(
    case: Case, patch: tuple[int, int, int], rng: np.random.Generator, augment_seed: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One patch of ``case`` to train on (towards its tumour, augmented unless
    ``augment_seed`` is None): a (4, *S) image and a (1, *S) label, S without the unit
    axis of a one-slice-deep patch (the 2D model's input)."""
    image, label = sample_patches(case, patch, 1, rng)
    one_image, one_label = image[0], label[0]
    if augment_seed is not None:
        one_image, one_label = augment(one_image, one_label, augment_seed)
    x = torch.from_numpy(np.ascontiguousarray(one_image))
    y = torch.from_numpy(one_label.astype(np.int64))[None]
    if patch[2] == 1:
        x, y = x[..., 0], y[..., 0]
    return x, y


class ScoreCache(Generic[T]):
    """The last scoring of a model, kept with the parameters it scored and their
    version counter (bumped by every in-place update: training, mixing): the last
    round's score and the final figures share one whole-volume inference."""

    def __init__(self) -> None:
        self._key: tuple[torch.Tensor, int] | None = None
        self._value: T | None = None

    def get(self, params: torch.Tensor, score: Callable[[], T]) -> T:
        if self._key is None or self._key[0] is not params or self._key[1] != params._version:
            self._value = score()
            self._key = (params, params._version)
        assert self._value is not None
        return self._value


@runtime_checkable
class Segmenter(Trainer, Protocol):
    """A trainer of segmentation rows, plain or DP-SGD (:mod:`.dp`), as they are scored."""

    def predict(self, row: int, cases: Sequence[Case]) -> list[np.ndarray]: ...

    def site_scores(self, cases: Sequence[Case]) -> list[RegionScores]: ...


class SegmentationTrainer:
    """Trains the rows of ``params`` in place on each site's cases."""

    def __init__(
        self,
        model: nn.Module,
        params: torch.Tensor,
        sites: Sequence[Sequence[Case]],
        config: TrainConfig,
        patch: tuple[int, int, int],
        seed: int = 0,
        first_row: int = 0,
        augmentation: bool = True,
    ) -> None:
        self.model = model
        self.layout = FlatLayout.of(model)
        if params.dim() != 2 or params.shape[1] != self.layout.dim:
            raise ValueError(f"params must be (K, {self.layout.dim}), got {tuple(params.shape)}")
        if len(sites) != params.shape[0] or any(len(cases) == 0 for cases in sites):
            raise ValueError(f"{params.shape[0]} models need as many sites, each with a case")
        self.params = params
        self.sites = [list(cases) for cases in sites]
        self.config = config
        self.patch = patch
        self.seed = seed
        self.first_row = first_row
        self.augmentation = augmentation
        self.device = params.device
        self.draws = 0
        self.loss = segmentation_loss()
        self._grad = torch.zeros_like(params)
        self.params.grad = self._grad
        self.optimizer = make_optimizer(params, config)

    def _forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = {
            name: flat[off : off + shape.numel()].view(shape)
            for name, shape, off in zip(
                self.layout.names, self.layout.shapes, self.layout.offsets, strict=True
            )
        }
        out: torch.Tensor = functional_call(self.model, views, (x,))
        return out

    def batch(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``row``'s patches for this draw: (B, 4, *S) images and (B, 1, *S) labels,
        S without the 2D model's unit axis."""
        site = self.first_row + row
        rng = np.random.default_rng(draw_seed(self.seed, site, self.draws, PATCH_STREAM))
        cases = self.sites[row]
        pairs = []
        for n in range(self.config.batch_size):
            case = cases[int(rng.integers(len(cases)))]
            shake = draw_seed(self.seed, site, self.draws * 4096 + n, AUGMENT_STREAM)
            pairs.append(
                training_patch(case, self.patch, rng, shake if self.augmentation else None)
            )
        x = torch.stack([image for image, _ in pairs])
        y = torch.stack([label for _, label in pairs])
        return x.to(self.device), y.to(self.device)

    def _step(self, active: torch.Tensor | None) -> torch.Tensor:
        losses = torch.zeros(self.params.shape[0])
        self._grad.zero_()
        for row in range(self.params.shape[0]):
            if active is not None and not bool(active[row]):
                continue
            x, y = self.batch(row)
            flat = self.params[row].detach().requires_grad_(True)
            with autocast_for(self.device):
                logits = self._forward(flat, x)
            loss = self.loss(logits.float(), y)
            (grad,) = torch.autograd.grad(loss, [flat])
            self._grad[row].copy_(grad)
            losses[row] = loss.detach()
        self.draws += 1
        frozen = None if active is None else self.params[~active].clone()
        self.optimizer.step()
        if active is not None and frozen is not None:
            with torch.no_grad():
                self.params[~active] = frozen
        return losses

    def set_progress(self, fraction: float) -> None:
        """Where we are in the planned run (0..1): the cosine schedule decays lr to 0 at 1."""
        set_schedule(self.optimizer, self.config, fraction)

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        """One round of local training; rows where ``active`` is False are left untouched."""
        return train_round(lambda: self._step(active), self.config)

    @torch.no_grad()
    def predict(self, row: int, cases: Sequence[Case]) -> list[np.ndarray]:
        """Row ``row``'s label volumes for whole ``cases`` (sliding windows)."""
        flat = self.params[row]
        return [
            predict_labels(lambda x: self._forward(flat, x), c.image, self.patch, self.device)
            for c in cases
        ]

    def site_scores(self, cases: Sequence[Case]) -> list[RegionScores]:
        """Row 0's scores on each of ``cases``: a node's held-out scores."""
        predicted = self.predict(0, cases)
        return [score_case(p, c.label, c.spacing) for p, c in zip(predicted, cases, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue training exactly: draws and optimizer."""
        return {"draws": self.draws, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.draws = int(saved.get("draws", 0))
        self.optimizer.load_state_dict(saved["optimizer"])

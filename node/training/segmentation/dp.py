"""DP-SGD for a hospital's U-Net: each patient is one record.

A site's promise is about its patients, so the unit of privacy is the case (all of one
patient's scans and its label map), not a voxel or a patch: Opacus samples cases
(Poisson, at rate batch size / cases), each sampled case gives one training patch
(towards its tumour, augmented), and the gradient of each case is clipped to ``clip``
before the noise is added. One patch per case per step keeps a case's influence on a
step to one clipped gradient, which is what the accountant charges for.

Everything else is the tabular path's (:mod:`node.training.dp.engine`): one Opacus
engine per site for its whole life, the budget spread over the DP rounds and never
overspent, the accountant's history in the checkpoint. The U-Net's per-case gradients
come from Opacus' own samplers for its convolutions and instance norms, and from its
functorch fallback for the layers it has no sampler for (PReLU, transposed convolutions).
The loss is :func:`.metrics.segmentation_loss` (Dice and cross-entropy, each a mean over
the cases of the batch, as Opacus' clipping assumes).

With a dozen or two cases a site, DP-SGD here is costly by nature: the noise is set
against a gradient averaged over about ``batch size`` patients. The benchmark reports
that cost (``benchmarks/brats.py``) rather than hiding it.

Unless ``[privacy] rounds`` says otherwise, a U-Net spreads its budget over every
planned round (:func:`node.training.dp_config.every_round`), not over the tabular
default's first 15% (at most 40). Why: a table's model learns what it can in tens of
steps, after which more DP rounds only add noise; a U-Net needs hundreds of steps to
learn anything, and starving it of them costs far more than the extra noise. Measured on
the BraTS benchmark (4 sites, block-k 5%, 150 rounds, δ = 1e-3, seed 0): at ε = 8
Murmur's mean Dice 0.049 with the budget over 22 rounds (the tabular default), 0.163
over 75, 0.176 over all 150; at ε = 3 0.029 over 22, 0.074 over 150; central DP-SGD,
every round on the pooled patients, 0.257 and 0.226.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from node.training.brats.volumes import Case
from node.training.dp.engine import DpRowsTrainer
from node.training.dp_config import DpConfig, every_round
from node.training.sampling import draw_seed
from node.training.segmentation.metrics import RegionScores, segmentation_loss
from node.training.segmentation.trainer import SegmentationTrainer, training_patch

DP_PATCH_STREAM = 4  # beside the plain trainer's patch (2) and augmentation (3) streams


class CasePatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A site's cases as DP records: item ``i`` is a fresh training patch of case ``i``.

    Every access is a new draw, seeded from (seed, site, draw number), so a restarted
    node that restores ``draws`` goes on with the patches it would have drawn."""

    def __init__(
        self,
        cases: Sequence[Case],
        patch: tuple[int, int, int],
        seed: int,
        site: int,
        augmentation: bool,
    ) -> None:
        self.cases, self.patch, self.seed, self.site = list(cases), patch, seed, site
        self.augmentation = augmentation
        self.draws = 0

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        draw = draw_seed(self.seed, self.site, self.draws, DP_PATCH_STREAM)
        self.draws += 1
        rng = np.random.default_rng(draw)
        return training_patch(
            self.cases[index], self.patch, rng, draw + 1 if self.augmentation else None
        )


class DpSegmentationTrainer(DpRowsTrainer[SegmentationTrainer]):
    """DP-SGD for each row of a :class:`SegmentationTrainer`, records = ``sites[k]``'s
    cases; prediction and scoring are the inner trainer's."""

    def __init__(
        self,
        inner: SegmentationTrainer,
        dp: DpConfig,
        planned_rounds: int,
        seed: int,
        mean_records: float | None = None,
        reproducible: bool = False,
    ) -> None:
        self.records = [
            CasePatches(cases, inner.patch, seed, inner.first_row + k, inner.augmentation)
            for k, cases in enumerate(inner.sites)
        ]
        super().__init__(
            inner,
            self.records,
            segmentation_loss(),
            every_round(dp, planned_rounds),  # the module docstring says why
            planned_rounds,
            seed,
            mean_records,
            reproducible,
        )

    def predict(self, row: int, cases: Sequence[Case]) -> list[np.ndarray]:
        return self.inner.predict(row, cases)

    def site_scores(self, cases: Sequence[Case]) -> list[RegionScores]:
        return self.inner.site_scores(cases)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "draws": [r.draws for r in self.records]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        super().load_state_dict(saved)
        for record, draws in zip(self.records, saved.get("draws", []), strict=False):
            record.draws = int(draws)

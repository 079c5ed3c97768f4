"""The loss and the BraTS scores, from MONAI.

Loss: ``DiceCELoss`` on the four-label softmax (Dice handles the tumour's small share of
the volume, cross-entropy gives every voxel a gradient early on).

Scores, per BraTS region (WT, TC, ET), on whole held-out volumes: Dice, and the 95th
percentile Hausdorff distance in millimetres (HD95, from the voxel spacing). A region
absent from both the truth and the prediction scores Dice 1 and HD95 0; absent from
one of them, Dice 0 and HD95 the volume's diagonal — the challenge's convention (it
uses 373.13 mm, the diagonal of its 240 × 240 × 155 grid).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice, compute_hausdorff_distance

from node.training.brats.volumes import regions_of

REGIONS = ("wt", "tc", "et")


def segmentation_loss() -> torch.nn.Module:
    """Dice + cross-entropy on logits (B, 4, …) against labels (B, 1, …)."""
    loss: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
    return loss


@dataclass(frozen=True)
class RegionScores:
    """One case's Dice and HD95 (mm) for each of WT, TC, ET."""

    dice: tuple[float, float, float]
    hd95: tuple[float, float, float]


def region_means(cases: Sequence[RegionScores]) -> RegionScores:
    """A site's Dice and HD95 per region, each averaged over its cases."""
    dice = np.mean([c.dice for c in cases], axis=0)
    hd95 = np.mean([c.hd95 for c in cases], axis=0)
    return RegionScores(
        (float(dice[0]), float(dice[1]), float(dice[2])),
        (float(hd95[0]), float(hd95[1]), float(hd95[2])),
    )


def mean_dice(cases: Sequence[RegionScores]) -> float:
    """The one figure a site's model is judged by: Dice averaged over WT, TC and ET,
    then over the cases (each case weighs the same, as in the challenge)."""
    return float(np.mean([np.mean(c.dice) for c in cases]))


def score_case(
    predicted: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> RegionScores:
    """Dice and HD95 of a predicted label volume against the true one (both canonical)."""
    diagonal = float(np.linalg.norm(np.array(truth.shape) * np.array(spacing)))
    pred_regions, true_regions = regions_of(predicted), regions_of(truth)
    dice, hd95 = [], []
    for p, t in zip(pred_regions, true_regions, strict=True):
        if not p.any() and not t.any():
            dice.append(1.0)
            hd95.append(0.0)
            continue
        if not p.any() or not t.any():
            dice.append(0.0)
            hd95.append(diagonal)
            continue
        pt = torch.from_numpy(p)[None, None]
        tt = torch.from_numpy(t)[None, None]
        dice.append(float(compute_dice(pt, tt, include_background=True)[0, 0]))
        with warnings.catch_warnings():
            # MONAI 1.6 calls its own deprecated argument inside; nothing of ours to change.
            warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
            distance = compute_hausdorff_distance(
                pt, tt, include_background=True, percentile=95, spacing=list(spacing)
            )
        hd95.append(float(distance[0, 0]))
    return RegionScores((dice[0], dice[1], dice[2]), (hd95[0], hd95[1], hd95[2]))

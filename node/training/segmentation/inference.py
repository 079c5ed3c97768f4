"""Whole-volume prediction: sliding windows over a held-out scan, as it is scored.

Training sees patches; a hospital's scan is larger. MONAI's ``sliding_window_inference``
tiles the volume with the training patch size, overlapping by a quarter, and blends the
tiles with Gaussian weights so that tile borders (where a U-Net sees least context)
count least. The 2D model runs on every axial slice, tiled the same way in-plane.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from node.training.device import autocast_for

Forward = Callable[[torch.Tensor], torch.Tensor]
SLICES_PER_BATCH = 16


@torch.no_grad()
def predict_labels(
    forward: Forward,
    image: np.ndarray,
    patch: tuple[int, int, int],
    device: torch.device,
) -> np.ndarray:
    """Canonical labels (X, Y, Z) for ``image`` (4, X, Y, Z); ``patch[2] == 1`` means a 2D
    model (``forward`` takes (B, 4, x, y)), else a 3D one."""

    def logits(window: torch.Tensor) -> torch.Tensor:
        with autocast_for(device):
            out = forward(window)
        return out.float()

    volume = torch.from_numpy(image).to(device)
    if patch[2] != 1:
        out = sliding_window_inference(
            volume[None], patch, 2, logits, overlap=0.25, mode="gaussian"
        )
        return _labels(out[0])
    slices = volume.permute(3, 0, 1, 2)  # (Z, 4, X, Y)
    parts = [
        sliding_window_inference(
            slices[lo : lo + SLICES_PER_BATCH],
            patch[:2],
            SLICES_PER_BATCH,
            logits,
            overlap=0.25,
            mode="gaussian",
        )
        for lo in range(0, slices.shape[0], SLICES_PER_BATCH)
    ]
    stacked = torch.cat([torch.as_tensor(p) for p in parts]).permute(1, 2, 3, 0)  # (4, X, Y, Z)
    return _labels(stacked)


def _labels(logits: torch.Tensor) -> np.ndarray:
    labels: np.ndarray = torch.as_tensor(logits).argmax(0).to(torch.uint8).cpu().numpy()
    return labels

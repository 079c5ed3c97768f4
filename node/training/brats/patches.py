"""Training patches drawn towards the tumour.

A glioma fills a few percent of a brain volume and its enhancing rim far less; patches
drawn uniformly would teach a model mostly to say "no tumour". As in nnU-Net and MONAI's
positive/negative crops, a share of the patches (``tumour_share``) is centred on a random
tumour voxel and the rest on a random brain voxel, so the model also sees healthy tissue
and the brain's edge. Patches near the volume's border are shifted inside it, and a
volume smaller than the patch is padded with zeros (the value outside the brain after
z-scoring) and background labels. A patch one voxel deep along the last axis is an axial
slice, which is how the 2D model trains.
"""

from __future__ import annotations

import numpy as np

from node.training.brats.volumes import Case


def _padded(case: Case, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pad = [(0, max(0, s - d)) for s, d in zip(size, case.label.shape, strict=True)]
    if not any(after for _, after in pad):
        return case.image, case.label, case.brain
    return (
        np.pad(case.image, [(0, 0), *pad]),
        np.pad(case.label, pad),
        np.pad(case.brain, pad),
    )


def sample_patches(
    case: Case,
    size: tuple[int, int, int],
    count: int,
    rng: np.random.Generator,
    tumour_share: float = 0.67,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` patches: images (count, 4, *size) float32 and labels (count, *size) uint8."""
    if not 0.0 <= tumour_share <= 1.0:
        raise ValueError(f"tumour_share {tumour_share} is not in [0, 1]")
    image, label, brain = _padded(case, size)
    tumour = np.argwhere(label > 0)
    inside = np.argwhere(brain)
    shape = np.array(label.shape)
    half = np.array(size) // 2
    images = np.empty((count, image.shape[0], *size), dtype=np.float32)
    labels = np.empty((count, *size), dtype=np.uint8)
    for n in range(count):
        pool = tumour if len(tumour) and rng.random() < tumour_share else inside
        centre = pool[rng.integers(len(pool))]
        start = np.clip(centre - half, 0, shape - np.array(size))
        box = tuple(slice(int(a), int(a) + s) for a, s in zip(start, size, strict=True))
        images[n] = image[(slice(None), *box)]
        labels[n] = label[box]
    return images, labels

"""MRI augmentation with MONAI transforms, applied to each training patch.

Sites see few scans from one scanner each; what augmentation varies is what differs
between hospitals and patients: orientation (flips along every axis; gliomas occur in
both hemispheres), pose and head size (small rotations and scaling), coil shading (a
random bias field), noise, and each sequence's intensity scale and offset. Image and
labels move together under the spatial transforms (labels resampled nearest-neighbour).
Every patch's draw is seeded from (public seed, site, draw, patch), so a node and the
simulator augment a site's patch the same way.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from monai.transforms import (
    Compose,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ("image", "label")


@cache
def _pipeline(spatial_dims: int) -> Compose:
    flips = [RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    return Compose(
        [
            *flips,
            RandAffined(
                KEYS,
                prob=0.3,
                rotate_range=(0.26,) * (3 if spatial_dims == 3 else 1),
                scale_range=(0.1,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd("image", prob=0.3, coeff_range=(0.0, 0.1)),
            RandGaussianNoised("image", prob=0.2, std=0.1),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    )


def augment(image: np.ndarray, label: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One patch, (4, *S) image and (*S) labels, augmented with the draw ``seed``; a 2D
    patch has S = (x, y, 1) and is augmented in-plane."""
    flat = label.ndim == 3 and label.shape[2] == 1
    spatial_dims = 2 if flat else 3
    img = image[..., 0] if flat else image
    lab = (label[..., 0] if flat else label)[None]
    pipeline = _pipeline(spatial_dims)
    pipeline.set_random_state(seed=seed % 2**32)
    out = pipeline({"image": img, "label": lab})
    new_image = np.asarray(out["image"], dtype=np.float32)
    new_label = np.rint(np.asarray(out["label"])[0]).astype(np.uint8)
    if flat:
        return new_image[..., None], new_label[..., None]
    return new_image, new_label

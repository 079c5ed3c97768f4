"""Healthy brain anatomy for generated cases: the MNI152 template that nilearn ships.

nilearn carries the ICBM 2009a symmetric template (T1 image, grey and white matter
probability maps, brain mask) inside the package, so nothing is downloaded. Cerebrospinal
fluid is what the mask holds beyond grey and white matter (ventricles, sulci). Each case
gets its own head: a small random affine (rotation, per-axis scale, shift) applied to the
tissue maps, as patients' brains differ in size and pose after registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Anatomy:
    """Tissue probabilities on one grid: ``gm``, ``wm``, ``csf`` in [0, 1] (zero outside
    ``brain``) and the grid's ``affine`` (voxel → mm)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> float:
        return float(abs(self.affine[0, 0]))


@cache
def template(resolution: int) -> Anatomy:
    """The MNI152 tissue maps at ``resolution`` mm (1 or 2), from nilearn's package data."""
    from nilearn import datasets

    mask_image = datasets.load_mni152_brain_mask(resolution=resolution)
    brain = np.asarray(mask_image.get_fdata()) > 0.5
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).get_fdata())
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).get_fdata())
    gm, wm = np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain
    total = gm + wm
    over = total > 1
    gm[over], wm[over] = gm[over] / total[over], wm[over] / total[over]
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain
    as32 = [a.astype(np.float32) for a in (gm, wm, csf)]
    return Anatomy(as32[0], as32[1], as32[2], brain, np.asarray(mask_image.affine, dtype=float))


def random_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rotation of up to 6° about each axis, scales 0.92–1.08 and a shift of up to 3 voxels:
    the (matrix, offset) of a voxel-space affine about the volume's centre."""
    angles = np.radians(rng.uniform(-6, 6, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    matrix = rx @ ry @ rz @ np.diag(rng.uniform(0.92, 1.08, size=3))
    return matrix, rng.uniform(-3, 3, size=3)


def posed(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The template moved into one patient's pose (output voxel v samples the template at
    ``matrix (v − c) + c + shift``)."""
    matrix, shift = random_pose(rng)
    centre = (np.array(anatomy.brain.shape) - 1) / 2
    offset = centre - matrix @ centre + shift

    def warp(volume: np.ndarray) -> np.ndarray:
        moved = ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="constant")
        out: np.ndarray = np.clip(moved, 0, 1).astype(np.float32)
        return out

    brain = warp(anatomy.brain.astype(np.float32)) > 0.5
    gm, wm, csf = (warp(m) * brain for m in (anatomy.gm, anatomy.wm, anatomy.csf))
    return Anatomy(gm, wm, csf, brain, anatomy.affine)

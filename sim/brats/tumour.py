"""Glioma geometry for generated cases: necrotic core ⊂ enhancing rim ⊂ edema.

A high-grade glioma grows from white matter as a roughly ellipsoidal mass: a necrotic
core, a rim of enhancing (blood–brain-barrier breaking) tumour around it, and vasogenic
edema beyond, which spreads further along white-matter tracts than through grey matter
and does not enter the ventricles. Each lesion is an ellipsoid of random axes and
orientation whose surface is roughened by a smooth random field; the three labels are
shells of one distance map, so the nesting holds by construction (the tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.training.brats.layout import ED, ET, NCR
from sim.brats.anatomy import Anatomy

NON_ENHANCING = 0.15  # the share of lesions with no enhancing rim


@dataclass(frozen=True)
class TumourProfile:
    """What a site's cases look like: the edema radius range (mm), where lesions sit
    (``side``: the share of left-hemisphere lesions; ``front``: of anterior ones), and
    how the site's annotators outline edema (``annotator``: where on the fading FLAIR
    signal they draw the border, as a shift of the edema's relative radius; readers
    disagree most there)."""

    radius_mm: tuple[float, float]
    side: float
    front: float
    annotator: float = 0.0


@dataclass(frozen=True)
class Tumour:
    labels: np.ndarray  # canonical labels on the anatomy's grid
    texture: np.ndarray  # smooth field in about [-1, 1]: intensity heterogeneity inside
    edema: np.ndarray  # edema's signal in [0, 1]: fades across the border, not at it
    enhancement: float  # how strongly the rim takes up contrast (1: the table's value)
    centre_mm: tuple[float, float, float]
    radius_mm: float


def _centre(
    anatomy: Anatomy, profile: TumourProfile, radius_vox: float, rng: np.random.Generator
) -> np.ndarray:
    """A white-matter voxel deep enough for the rim, on the profile's side and lobe."""
    depth = ndimage.distance_transform_edt(anatomy.brain)
    world = np.argwhere(anatomy.wm > 0.6)
    mm = world @ anatomy.affine[:3, :3].T + anatomy.affine[:3, 3]
    left = rng.random() < profile.side
    front = rng.random() < profile.front
    want = ((mm[:, 0] < 0) == left) & ((mm[:, 1] > -18) == front)
    deep = depth[tuple(world.T)] > 0.6 * radius_vox
    for pool in (world[want & deep], world[deep], world):
        if len(pool):
            return np.asarray(pool[rng.integers(len(pool))])
    raise ValueError("the anatomy has no white matter")


def grow(anatomy: Anatomy, profile: TumourProfile, rng: np.random.Generator) -> Tumour:
    """One lesion placed in ``anatomy`` according to ``profile``."""
    spacing = anatomy.spacing
    radius_mm = rng.uniform(*profile.radius_mm)
    radius = radius_mm / spacing
    centre = _centre(anatomy, profile, radius, rng)
    shape = np.array(anatomy.brain.shape)
    reach = int(np.ceil(1.8 * radius)) + 2
    low, high = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    grid = np.stack(
        np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high, strict=True)), indexing="ij"),
        axis=-1,
    )
    offset = grid - centre
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = radius * rng.uniform(0.75, 1.25, size=3)
    distance = np.linalg.norm((offset @ q) / axes, axis=-1)
    rough = ndimage.gaussian_filter(rng.normal(size=distance.shape), sigma=max(1.0, radius / 3))
    rough /= rough.std() + 1e-9
    distance = distance * np.exp(-0.18 * rough)
    wm, csf, brain = anatomy.wm[box], anatomy.csf[box], anatomy.brain[box]
    rim = rng.uniform(0.55, 0.8)
    core = rim * rng.uniform(0.4, 0.75) if rng.random() < 0.9 else 0.0
    # Some gliomas do not enhance at all: their core is non-enhancing tumour (label 1,
    # with necrosis) and a case without ET scores ET Dice 0 or 1, as in the challenge.
    enhancing = rng.random() >= NON_ENHANCING
    edema_distance = distance * (1.0 - 0.2 * wm)  # reaches further along white matter
    local = np.zeros(distance.shape, dtype=np.uint8)
    local[(edema_distance < 1.0 + profile.annotator) & (csf < 0.5)] = ED
    local[distance < rim] = ET if enhancing else NCR
    local[distance < core] = NCR
    local[~brain] = 0
    labels = np.zeros(anatomy.brain.shape, dtype=np.uint8)
    labels[box] = local
    texture = np.zeros(anatomy.brain.shape, dtype=np.float32)
    field = ndimage.gaussian_filter(rng.normal(size=distance.shape), sigma=1.5)
    texture[box] = np.clip(field / (field.std() + 1e-9), -2, 2) / 2
    edema = np.zeros(anatomy.brain.shape, dtype=np.float32)
    # full signal inside 0.75 of the radius, none beyond 1.25: the border is a gradient
    edema[box] = np.clip((1.25 - edema_distance) / 0.5, 0, 1) * (csf < 0.5) * brain
    enhancement = float(rng.uniform(0.35, 1.0)) if enhancing else 0.0
    centre_mm = anatomy.affine[:3, :3] @ centre + anatomy.affine[:3, 3]
    return Tumour(
        labels,
        texture,
        edema,
        enhancement,
        (float(centre_mm[0]), float(centre_mm[1]), float(centre_mm[2])),
        float(radius_mm),
    )


@dataclass(frozen=True)
class Mimics:
    """What looks like tumour and is not (never labelled): enhancing vessels and choroid
    plexus (bright on T1ce like the rim), and white-matter hyperintensities (bright on
    FLAIR and T2 like edema; common in older patients)."""

    vessels: np.ndarray
    hyperintensities: np.ndarray


def mimics(anatomy: Anatomy, rng: np.random.Generator) -> Mimics:
    """A few vessels (smoothed random walks) and small hyperintense spots in white matter."""
    shape = anatomy.brain.shape
    inside = np.argwhere(anatomy.brain)
    vessels = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        point = inside[rng.integers(len(inside))].astype(float)
        direction = rng.normal(size=3)
        for _ in range(int(rng.integers(10, 30))):
            direction = direction / np.linalg.norm(direction) + 0.3 * rng.normal(size=3)
            point = np.clip(point + direction / np.linalg.norm(direction), 0, np.array(shape) - 1)
            vessels[tuple(np.rint(point).astype(int))] = 1.0
    vessels = np.clip(ndimage.gaussian_filter(vessels, 0.6) * 4, 0, 1) * anatomy.brain
    spots = np.zeros(shape, dtype=np.float32)
    white = np.argwhere(anatomy.wm > 0.7)
    for _ in range(int(rng.integers(2, 9))):
        spots[tuple(white[rng.integers(len(white))])] = 1.0
    spots = ndimage.gaussian_filter(spots, rng.uniform(0.8, 1.6))
    spots = np.clip(spots / (spots.max() + 1e-9) * 1.5, 0, 1) * anatomy.brain
    return Mimics(vessels.astype(np.float32), spots.astype(np.float32))

"""MRI contrasts and per-site scanner effects for generated cases.

Each channel is a mix of tissue intensities weighted by the tissue probabilities, as a
voxel holds partial volumes of tissues. The table below follows how the tissues look on
the four BraTS sequences: white matter brighter than grey on T1 and darker on T2; fluid
dark on T1 and FLAIR, bright on T2; edema dark on T1 and bright on T2 and FLAIR (FLAIR is
where radiologists outline it); the enhancing rim bright on post-contrast T1 only; the
necrotic core dark on T1 and T1ce, bright on T2.

Hospitals' scanners differ, and that is what makes sites non-IID even for the same
anatomy: each site has its own intensity scale per sequence, slightly different tissue
contrasts (sequence parameters), a smooth multiplicative bias field (coil sensitivity),
Rician noise, and blur (thicker slices along z, softer in-plane reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from node.training.brats.layout import ED, ET, NCR
from sim.brats.anatomy import Anatomy
from sim.brats.tumour import Mimics, Tumour

# Intensity of each tissue on T1, T1ce, T2, FLAIR (white matter on T1 = 1).
CONTRAST: dict[str | int, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.45, 0.55),
    "gm": (0.65, 0.68, 0.65, 0.72),
    "csf": (0.22, 0.24, 1.00, 0.10),
    ED: (0.58, 0.60, 0.90, 1.05),
    ET: (0.62, 1.45, 0.78, 0.85),
    NCR: (0.30, 0.32, 1.08, 0.62),
    "vessel": (0.70, 1.35, 0.35, 0.45),  # flow: dark on T2, bright after contrast
    "hyperintensity": (0.85, 0.86, 0.80, 0.95),  # small vessel disease, not tumour
}


@dataclass(frozen=True)
class Scanner:
    """One site's scanner: ``scale`` per channel, ``contrast`` (a per-tissue, per-channel
    multiplier near 1), ``bias`` strength, ``noise`` (σ relative to white matter on each
    channel) and ``blur`` (Gaussian σ in voxels, in-plane and along z)."""

    scale: tuple[float, float, float, float]
    contrast: dict[str | int, tuple[float, float, float, float]]
    bias: float
    noise: float
    blur: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Scanner:
        return cls(
            scale=tuple(float(s) for s in rng.uniform(300, 1500, size=4)),  # type: ignore[arg-type]
            contrast={
                tissue: tuple(float(m) for m in rng.uniform(0.9, 1.1, size=4))  # type: ignore[misc]
                for tissue in CONTRAST
            },
            bias=float(rng.uniform(0.05, 0.35)),
            noise=float(rng.uniform(0.02, 0.08)),
            blur=(float(rng.uniform(0.0, 0.6)), float(rng.uniform(0.3, 1.3))),
        )


def for_case(scanner: Scanner, rng: np.random.Generator) -> Scanner:
    """The site's scanner as one patient's scan sees it: sequence parameters, coil and
    noise vary a little from visit to visit (contrasts ±5%, bias ±30%, noise ±30%)."""
    return replace(
        scanner,
        contrast={
            tissue: tuple(
                float(m * j) for m, j in zip(values, rng.uniform(0.95, 1.05, 4), strict=True)
            )  # type: ignore[misc]
            for tissue, values in scanner.contrast.items()
        },
        bias=scanner.bias * float(rng.uniform(0.7, 1.3)),
        noise=scanner.noise * float(rng.uniform(0.7, 1.3)),
    )


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random second-order polynomial over the volume: smooth, mean about 1."""
    axes = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    terms = [*axes, *(a * b for i, a in enumerate(axes) for b in axes[i:])]
    weights = rng.normal(size=len(terms))
    field = sum(w * t for w, t in zip(weights, terms, strict=True))
    field = np.asarray(field) / (np.abs(np.asarray(field)).max() + 1e-9)
    out: np.ndarray = np.exp(strength * field).astype(np.float32)
    return out


def render(
    anatomy: Anatomy, tumour: Tumour, mimic: Mimics, scanner: Scanner, rng: np.random.Generator
) -> np.ndarray:
    """(4, X, Y, Z) int16 channels T1, T1ce, T2, FLAIR: 0 outside the brain, ≥ 1 inside."""
    labels = tumour.labels
    core = {
        label: ndimage.gaussian_filter((labels == label).astype(np.float32), 0.6)
        for label in (ET, NCR)
    }
    # Edema's signal fades across its border, so the label there is a reader's call.
    soft = {ED: np.clip(tumour.edema - sum(core.values()), 0, 1), **core}
    extra = {"vessel": mimic.vessels, "hyperintensity": mimic.hyperintensities}
    lesion = np.clip(sum(soft.values()), 0, 1)
    healthy = 1.0 - lesion
    out = np.zeros((4, *labels.shape), dtype=np.int16)
    bias = _bias_field(labels.shape, scanner.bias, rng)
    for channel in range(4):
        value = {t: CONTRAST[t][channel] * scanner.contrast[t][channel] for t in CONTRAST}
        image = healthy * (
            anatomy.wm * value["wm"] + anatomy.gm * value["gm"] + anatomy.csf * value["csf"]
        )
        if channel == 1:  # the rim enhances as strongly as this lesion takes up contrast
            rim = CONTRAST[ET][0] + tumour.enhancement * (CONTRAST[ET][1] - CONTRAST[ET][0])
            value[ET] = rim * scanner.contrast[ET][1]
        for label, weight in soft.items():
            image = image + weight * value[label] * (1.0 + 0.25 * tumour.texture)
        for name, weight in extra.items():
            image = image * (1 - weight) + weight * value[name]
        in_plane, through = scanner.blur
        image = ndimage.gaussian_filter(image, (in_plane, in_plane, through))
        image = image * bias
        sigma = scanner.noise
        real = image + rng.normal(scale=sigma, size=image.shape)
        imaginary = rng.normal(scale=sigma, size=image.shape)
        magnitude = np.hypot(real, imaginary) * scanner.scale[channel]
        out[channel] = np.where(anatomy.brain, np.clip(np.rint(magnitude), 1, 32767), 0)
    return out

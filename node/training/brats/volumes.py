"""Reading one BraTS case into arrays a model can train on, with every check a real
archive needs.

A case's five files must agree: the same shape and the same affine (the voxel grid in
scanner space), or the labels would be drawn on another image. Files get truncated in
copies, and segmentations get exported with stray values; each of those is one
:class:`CaseError` naming the case and the file, never a crash of the run.

Preprocessing follows the BraTS convention that everything outside the skull-stripped
brain is 0: the brain mask is where any channel is non-zero; the volume is cropped to
the mask's bounding box; each channel is z-scored on the brain voxels (scanners differ
in scale by factors, z-scoring removes that) and left 0 outside.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from node.training.brats.layout import CHANNELS, ED, ET, NCR, CaseError, CaseFiles

# Affines of one case's files agree to this (mm, and the rotation's cosines): exports
# round them differently, a shifted or resampled file is off by far more.
AFFINE_TOLERANCE = 1e-3
# Read errors of a damaged or foreign file (nibabel reads lazily, so they surface in get_fdata).
_READ_ERRORS = (OSError, EOFError, zlib.error, ImageFileError, ValueError, MemoryError)


@dataclass(frozen=True)
class Case:
    """One case, cropped to its brain: ``image`` (4, X, Y, Z) float32 in CHANNELS order,
    z-scored inside the brain; ``label`` (X, Y, Z) uint8 canonical labels; ``brain`` the
    mask; ``spacing`` the voxel size in mm (for HD95)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    spacing: tuple[float, float, float]

    def regions(self) -> np.ndarray:
        """(3, X, Y, Z) bool: whole tumour, tumour core, enhancing tumour (the BraTS regions)."""
        return regions_of(self.label)


def regions_of(label: np.ndarray) -> np.ndarray:
    """WT = NCR ∪ ED ∪ ET, TC = NCR ∪ ET, ET: the nested regions BraTS scores."""
    return np.stack([label > 0, (label == NCR) | (label == ET), label == ET])


def _read(case: str, path_name: str, image: nib.Nifti1Image) -> np.ndarray:
    try:
        data: np.ndarray = np.asanyarray(image.dataobj)
    except _READ_ERRORS as exc:
        raise CaseError(case, path_name, f"cannot be read ({type(exc).__name__}: {exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(case, path_name, f"not a 3D volume (shape {data.shape})")
    return data


def _open(case: str, path: object) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        name = getattr(path, "name", str(path))
        raise CaseError(case, name, f"not a NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise CaseError(case, getattr(path, "name", str(path)), "not a NIfTI image")
    return image


def read_case(files: CaseFiles) -> Case:
    """The case's arrays, checked and preprocessed; :class:`CaseError` names what is wrong."""
    case = files.name
    seg_image = _open(case, files.segmentation)
    reference = files.segmentation.name
    shape, affine = seg_image.shape[:3], seg_image.affine
    channels = []
    for channel, path in zip(CHANNELS, files.channels, strict=True):
        image = _open(case, path)
        if image.shape[:3] != shape:
            raise CaseError(
                case, path.name, f"shape {image.shape[:3]} differs from {reference}'s {shape}"
            )
        if not np.allclose(image.affine, affine, atol=AFFINE_TOLERANCE):
            raise CaseError(case, path.name, f"affine differs from {reference}'s ({channel})")
        data = _read(case, path.name, image).astype(np.float32)
        if not np.isfinite(data).all():
            raise CaseError(case, path.name, "holds NaN or infinite values")
        channels.append(data)
    label = _labels(case, files, _read(case, reference, seg_image))
    image_stack = np.stack(channels)
    brain = (image_stack != 0).any(axis=0)
    if not brain.any():
        raise CaseError(case, files.channels[0].name, "every channel is empty (all zero)")
    outside = label[~brain] > 0
    if outside.any():
        raise CaseError(
            case, reference, f"{int(outside.sum())} tumour voxels lie outside the brain"
        )
    box = _bounding_box(brain)
    image_stack, label, brain = image_stack[(slice(None), *box)], label[box], brain[box]
    spacing = tuple(float(z) for z in seg_image.header.get_zooms()[:3])
    return Case(case, _zscore(image_stack, brain), label, brain, spacing)  # type: ignore[arg-type]


def _labels(case: str, files: CaseFiles, raw: np.ndarray) -> np.ndarray:
    name = files.segmentation.name
    if not np.isfinite(raw).all() or not np.equal(np.mod(raw, 1), 0).all():
        raise CaseError(case, name, "labels are not whole numbers")
    values = np.unique(raw).astype(np.int64)
    known = files.naming.labels
    unknown = sorted(set(values.tolist()) - set(known))
    if unknown:
        raise CaseError(
            case,
            name,
            f"label values {unknown} are not {files.naming.year} BraTS labels {sorted(known)}",
        )
    lookup = np.zeros(max(known) + 1, dtype=np.uint8)
    for disk, canonical in known.items():
        lookup[disk] = canonical
    return lookup[raw.astype(np.int64)]


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return box[0], box[1], box[2]


def _zscore(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][brain]
        std = float(values.std())
        out[c][brain] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


__all__ = ["ED", "ET", "NCR", "Case", "read_case", "regions_of"]

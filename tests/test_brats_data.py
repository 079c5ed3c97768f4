"""BraTS case folders on disk: both namings, the label mapping, every way a case can be
broken (skipped with one line naming the case and file), and tumour-weighted patches."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from node.errors import ConfigError
from node.training.brats import load_site_cases
from node.training.brats.layout import ED, ET, NAMINGS, NCR
from node.training.brats.patches import sample_patches
from node.training.brats.volumes import regions_of

SHAPE = (14, 16, 12)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _volumes(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Four channels with a brain box (outside 0) and a nested lesion in canonical labels."""
    brain = np.zeros(SHAPE, dtype=bool)
    brain[2:12, 2:14, 2:10] = True
    channels = [np.where(brain, rng.uniform(50, 500, SHAPE), 0).astype(np.int16) for _ in range(4)]
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:10, 5:11, 3:9] = ED
    label[5:9, 6:10, 4:8] = ET
    label[6:8, 7:9, 5:7] = NCR
    return channels, label


def write_case(
    root: Path,
    name: str,
    year: str = "2021",
    rng: np.random.Generator | None = None,
    label: np.ndarray | None = None,
    affines: dict[str, np.ndarray] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    naming = NAMINGS[year]
    channels, canonical = _volumes(rng or np.random.default_rng(0))
    disk = {c: d for d, c in naming.labels.items()}
    seg = np.vectorize(disk.__getitem__)(canonical).astype(np.uint8) if label is None else label
    folder = root / name
    folder.mkdir(parents=True)
    for suffix, data in zip((*naming.suffixes, "seg"), (*channels, seg), strict=True):
        if shapes and suffix in shapes:
            data = np.zeros(shapes[suffix], dtype=data.dtype)
            data[1:-1, 1:-1, 1:-1] = 7
        affine = (affines or {}).get(suffix, AFFINE)
        nib.save(nib.Nifti1Image(data, affine), naming.path(folder, suffix))
    return folder


@pytest.mark.parametrize("year", ["2021", "2023"])
def test_both_namings_load_into_canonical_channels_and_labels(tmp_path: Path, year: str) -> None:
    write_case(tmp_path, "case-a", year)
    write_case(tmp_path, "case-b", year, rng=np.random.default_rng(1))
    site = load_site_cases(tmp_path)
    assert [c.name for c in site.cases] == ["case-a", "case-b"] and not site.skipped
    case = site.cases[0]
    # cropped to the brain box, four channels, z-scored inside the brain and 0 outside
    assert case.image.shape == (4, 10, 12, 8) and case.brain.all()
    assert np.allclose(case.image.reshape(4, -1).mean(1), 0, atol=1e-5)
    assert np.allclose(case.image.reshape(4, -1).std(1), 1, atol=1e-4)
    _, expected = _volumes(np.random.default_rng(0))
    assert np.array_equal(case.label, expected[2:12, 2:14, 2:10])
    assert np.bincount(case.label.ravel()).tolist()[1:] == [8, 216 - 64, 64 - 8]
    assert case.spacing == (1.0, 1.0, 1.0)


def test_both_namings_may_share_a_site_folder(tmp_path: Path) -> None:
    write_case(tmp_path, "old", "2021")
    write_case(tmp_path, "new", "2023")
    site = load_site_cases(tmp_path)
    assert len(site.cases) == 2
    assert np.array_equal(site.cases[0].label, site.cases[1].label)


def test_regions_are_the_nested_brats_regions() -> None:
    label = np.array([0, NCR, ED, ET], dtype=np.uint8)
    wt, tc, et = regions_of(label)
    assert wt.tolist() == [False, True, True, True]
    assert tc.tolist() == [False, True, False, True]
    assert et.tolist() == [False, False, False, True]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _breakages(root: Path) -> dict[str, str]:
    """Each broken case and the file (and problem) its one line must name."""
    expected = {}
    folder = write_case(root, "missing", "2021")
    (folder / "missing_flair.nii.gz").unlink()
    expected["missing"] = "missing_flair.nii.gz: missing"
    folder = write_case(root, "truncated", "2023")
    _truncate(folder / "truncated-t2w.nii.gz")
    expected["truncated"] = "truncated-t2w.nii.gz: cannot be read"
    folder = write_case(root, "garbage", "2021")
    (folder / "garbage_t1.nii.gz").write_bytes(gzip.compress(b"not an image at all"))
    expected["garbage"] = "garbage_t1.nii.gz: not a NIfTI file"
    write_case(root, "shape", "2021", shapes={"t1ce": (14, 16, 13)})
    expected["shape"] = "shape_t1ce.nii.gz: shape (14, 16, 13) differs from shape_seg.nii.gz's"
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    write_case(root, "affine", "2023", affines={"t2f": shifted})
    expected["affine"] = "affine-t2f.nii.gz: affine differs"
    bad = np.zeros(SHAPE, dtype=np.uint8)
    bad[5, 5, 5] = 3  # 3 is ET in 2023 but no label in 2021
    write_case(root, "labels", "2021", label=bad)
    expected["labels"] = "labels_seg.nii.gz: label values [3] are not 2021 BraTS labels"
    half = np.zeros(SHAPE, dtype=np.float32)
    half[5, 5, 5] = 1.5
    write_case(root, "fraction", "2021", label=half)
    expected["fraction"] = "fraction_seg.nii.gz: labels are not whole numbers"
    outside = np.zeros(SHAPE, dtype=np.uint8)
    outside[0, 0, 0] = 2
    write_case(root, "outside", "2021", label=outside)
    expected["outside"] = "outside_seg.nii.gz: 1 tumour voxels lie outside the brain"
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    expected["empty"] = "empty: no BraTS files"
    return expected


def test_every_broken_case_is_skipped_with_one_line_and_the_rest_load(tmp_path: Path) -> None:
    expected = _breakages(tmp_path)
    write_case(tmp_path, "good", "2021")
    lines: list[str] = []
    site = load_site_cases(tmp_path, report=lines.append)
    assert [c.name for c in site.cases] == ["good"]
    assert list(site.skipped) == lines and len(lines) == len(expected)
    for case, text in expected.items():
        mine = [line for line in lines if line.startswith(f"skipped case {case}: ")]
        assert len(mine) == 1, (case, lines)
        assert text in mine[0], (case, mine[0])


def test_a_folder_without_cases_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_site_cases(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="holds no case folders"):
        load_site_cases(tmp_path)


def test_patches_are_drawn_towards_the_tumour(tmp_path: Path) -> None:
    write_case(tmp_path, "case", "2021")
    case = load_site_cases(tmp_path).cases[0]
    rng = np.random.default_rng(0)
    images, labels = sample_patches(case, (3, 3, 3), 10, rng)
    assert images.shape == (10, 4, 3, 3, 3) and labels.shape == (10, 3, 3, 3)
    # one-voxel patches are their centres: where they land, without the border's shift
    _, centres = sample_patches(case, (1, 1, 1), 1000, rng, tumour_share=0.7)
    tumour_share_of_brain = (case.label > 0).mean()
    # 0.7 drawn from the tumour plus the tumour's share of the uniform 0.3
    in_tumour = (centres > 0).mean()
    assert in_tumour == pytest.approx(0.7 + 0.3 * tumour_share_of_brain, abs=0.05)
    _, centres = sample_patches(case, (1, 1, 1), 1000, rng, tumour_share=0.0)
    assert (centres > 0).mean() == pytest.approx(tumour_share_of_brain, abs=0.05)


def test_patches_larger_than_the_volume_are_padded_and_slices_are_2d(tmp_path: Path) -> None:
    write_case(tmp_path, "case", "2023")
    case = load_site_cases(tmp_path).cases[0]
    images, labels = sample_patches(case, (16, 16, 1), 5, np.random.default_rng(2))
    assert images.shape == (5, 4, 16, 16, 1)
    # the crop is 10 × 12 in-plane: the rest is padding, zero image and background
    assert (images[:, :, 10:] == 0).all() and (labels[:, 10:] == 0).all()
    assert (labels > 0).any()
    with pytest.raises(ValueError, match="tumour_share"):
        sample_patches(case, (4, 4, 4), 1, np.random.default_rng(0), tumour_share=1.5)

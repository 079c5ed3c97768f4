"""``murmur data make-brats``: real NIfTI cases the loader reads, lesions nested as in a
glioma, contrasts as on each sequence, and sites that differ as hospitals do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from node.errors import ConfigError
from node.training.brats import load_site_cases
from node.training.brats.layout import CHANNELS, ED, ET, NCR
from sim.brats.make import site_counts
from tests.conftest import tiny_brats


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("brats")
    return out, tiny_brats(out, cases=2, naming="2023", seed=3)


def test_site_counts_spread_the_cases_and_keep_the_total() -> None:
    assert site_counts(4, 16, 0.5) == [24, 19, 13, 8]
    assert site_counts(4, 16, 0.0) == [16] * 4
    assert sum(site_counts(5, 7, 0.3)) == 35


def test_generated_cases_load_with_nested_lesions(
    generated: tuple[Path, dict[str, object]],
) -> None:
    out, manifest = generated
    lesions = {lesion["case"]: lesion for site in manifest["sites"] for lesion in site["lesions"]}  # type: ignore[attr-defined]
    for site in ("site-1", "site-2"):
        loaded = load_site_cases(out / site)
        assert len(loaded.cases) == 2 and not loaded.skipped
        for case in loaded.cases:
            counts = np.bincount(case.label.ravel(), minlength=4)
            assert counts[ED] > 0 and counts[NCR] + counts[ET] > 0
            # core inside the rim inside the edema: mean distance from the lesion's middle
            # (a lesion without enhancement has a non-enhancing core, label 1, in edema)
            where = {label: np.argwhere(case.label == label) for label in (NCR, ET, ED)}
            middle = np.argwhere((case.label == NCR) | (case.label == ET)).mean(axis=0)
            spread = {
                label: np.linalg.norm(v - middle, axis=1).mean()
                for label, v in where.items()
                if len(v)
            }
            if NCR in spread and ET in spread:
                assert spread[NCR] < spread[ET]
            assert max(spread.get(NCR, 0), spread.get(ET, 0)) < spread[ED]
            assert lesions[case.name]["voxels_ncr_ed_et"] == counts[1:].tolist()


def test_each_sequence_shows_the_tissue_it_should(
    generated: tuple[Path, dict[str, object]],
) -> None:
    out, _ = generated
    cases = [c for site in ("site-1", "site-2") for c in load_site_cases(out / site).cases]
    case = next(c for c in cases if (c.label == ET).any())  # one that enhances
    t1, t1ce, t2, flair = (case.image[CHANNELS.index(c)] for c in CHANNELS)
    healthy = case.brain & (case.label == 0)
    # edema is what FLAIR and T2 show bright; the enhancing rim is what contrast lights up
    assert flair[case.label == ED].mean() > flair[healthy].mean() + 1.0
    assert t2[case.label == ED].mean() > t2[healthy].mean()
    # the rim takes up contrast: brighter after it than before, where healthy tissue is not
    uptake = t1ce - t1
    assert uptake[case.label == ET].mean() > uptake[healthy].mean() + 0.5


def test_sites_have_their_own_scanners(generated: tuple[Path, dict[str, object]]) -> None:
    out, manifest = generated
    scales = [site["scanner"]["scale"] for site in manifest["sites"]]  # type: ignore[attr-defined]
    raw = []
    for site in ("site-1", "site-2"):
        folder = sorted((out / site).iterdir())[0]
        data = np.asarray(nib.load(folder / f"{folder.name}-t1n.nii.gz").dataobj)
        raw.append(float(np.median(data[data > 0])))
    # the files carry each site's intensity scale: raw medians differ by the scale ratio
    assert raw[0] / raw[1] == pytest.approx(scales[0][0] / scales[1][0], rel=0.2)
    assert json.loads((out / "manifest.json").read_text())["naming"] == "2023"


def test_the_same_seed_gives_the_same_cases(
    tmp_path: Path, generated: tuple[Path, dict[str, object]]
) -> None:
    out, manifest = generated
    again = tiny_brats(tmp_path, cases=2, naming="2021", seed=3)
    assert again["sites"] == manifest["sites"]
    first = load_site_cases(out / "site-2").cases[1]
    second = load_site_cases(tmp_path / "site-2").cases[1]
    assert np.array_equal(first.label, second.label) and np.allclose(first.image, second.image)


def test_cases_made_with_other_settings_are_not_reused(
    generated: tuple[Path, dict[str, object]],
) -> None:
    out, _ = generated
    with pytest.raises(ConfigError, match="other settings \\(seed differ\\)"):
        tiny_brats(out, cases=2, naming="2023", seed=4)


def test_the_command_refuses_a_site_too_small_to_hold_out_a_case(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "data",
            "make-brats",
            "--sites",
            "4",
            "--cases-per-site",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "smallest site would hold 1 case(s)" in done.stderr

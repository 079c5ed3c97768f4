"""``murmur data make-brats``: BraTS-layout cases for several hospitals, on real anatomy.

Researchers need multimodal brain MRI with tumour labels to try Murmur's segmentation
workload, and the real BraTS archives cannot be shipped. This writes real ``.nii.gz``
cases in either BraTS naming, one folder per site (``OUT/site-1/<case>/…``), built on the
MNI152 anatomy nilearn ships (:mod:`.anatomy`), with a glioma in each (:mod:`.tumour`)
imaged by the site's own scanner (:mod:`.scanner`). Sites are non-IID the way hospitals
are: each has its own scanner, its own range of tumour sizes and preferred locations
(referral patterns), and its own number of cases. ``OUT/manifest.json`` records every
site's parameters and every case's lesion.

Each case is written to a hidden folder and renamed into place when whole, so a run cut
short leaves whole cases only; generating again with the same settings skips the cases
that exist (other settings are refused: the manifest records them).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from murmur.files import atomic_write
from node.cli import Command
from node.errors import ConfigError
from node.training.brats.layout import NAMINGS, SEGMENTATION
from sim.brats.tumour import TumourProfile

MIN_CASES = 2  # one to train on and one held out
VERSION = 2  # of what a case looks like; cases of another version are not reused


def site_counts(sites: int, mean: int, imbalance: float) -> list[int]:
    """Cases per site: from (1 + imbalance)·mean down to (1 − imbalance)·mean, summing to
    sites·mean (hospitals differ in size; the smallest is where local training fails)."""
    weights = np.linspace(1 + imbalance, 1 - imbalance, sites) if sites > 1 else np.ones(1)
    raw = weights * mean
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: sites * mean - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def profiles(sites: int) -> list[TumourProfile]:
    """Each site's tumour profile: the first site sees large lesions, the last small ones;
    sites alternate hemispheres and move from frontal to posterior; pairs of sites outline
    edema tighter or wider."""
    out = []
    for s in range(sites):
        t = s / (sites - 1) if sites > 1 else 0.5
        centre = 26.0 - 12.0 * t
        side = 0.8 if s % 2 == 0 else 0.2
        annotator = 0.1 * (-1) ** (s // 2)  # two reading styles, alternating in pairs
        out.append(TumourProfile((centre - 5.0, centre + 5.0), side, 0.75 - 0.5 * t, annotator))
    return out


def _check_reuse(out: Path, manifest: dict[str, object]) -> None:
    """Cases already in ``out`` are kept only if they were made with these settings:
    a folder of other cases would be mixed into this set without a word."""
    path = out / "manifest.json"
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: unreadable ({exc}); delete {out} or choose another --out"
        ) from None
    keys = ("version", "naming", "seed", "resolution_mm", "cases")
    differ = [k for k in keys if earlier.get(k) != manifest[k]]
    if differ:
        raise ConfigError(
            f"{out} holds cases made with other settings ({', '.join(differ)} differ); "
            "delete it or choose another --out"
        )


def _write_case(
    folder: Path,
    name: str,
    naming: str,
    channels: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
) -> None:
    import nibabel as nib

    style = NAMINGS[naming]
    disk_labels = {canonical: disk for disk, canonical in style.labels.items()}
    lookup = np.array([disk_labels[c] for c in range(4)], dtype=np.uint8)
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for suffix, volume in zip(style.suffixes, channels, strict=True):
        nib.save(nib.Nifti1Image(volume, affine), tmp / f"{name}{style.separator}{suffix}.nii.gz")
    seg = nib.Nifti1Image(lookup[labels], affine)
    nib.save(seg, tmp / f"{name}{style.separator}{SEGMENTATION}.nii.gz")
    tmp.rename(folder / name)


def make(
    out: Path,
    sites: int,
    cases_per_site: int,
    naming: str,
    seed: int,
    resolution: int,
    imbalance: float,
    show: bool = True,
) -> dict[str, object]:
    """Write the cases and the manifest; returns the manifest."""
    from rich.progress import Progress

    from sim.brats.anatomy import posed, template
    from sim.brats.scanner import Scanner, for_case, render
    from sim.brats.tumour import grow, mimics

    counts = site_counts(sites, cases_per_site, imbalance)
    if min(counts) < MIN_CASES:
        raise ConfigError(
            f"the smallest site would hold {min(counts)} case(s); each needs at least "
            f"{MIN_CASES}: raise --cases-per-site or lower --imbalance"
        )
    anatomy = template(resolution)
    root = np.random.default_rng(seed)
    site_seeds = root.spawn(sites)
    manifest: dict[str, object] = {
        "generator": "murmur data make-brats",
        "version": VERSION,
        "naming": naming,
        "seed": seed,
        "resolution_mm": resolution,
        "shape": list(anatomy.brain.shape),
        "cases": counts,
        "sites": [],
    }
    _check_reuse(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    # the settings first, so that a run cut short is not reused under other settings
    atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    total = sum(counts)
    with Progress(disable=not show, transient=True) as progress:
        task = progress.add_task("writing BraTS cases", total=total)
        for s, (count, profile, rng) in enumerate(
            zip(counts, profiles(sites), site_seeds, strict=True)
        ):
            scanner = Scanner.draw(rng)
            folder = out / f"site-{s + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            cases = []
            for i, case_rng in enumerate(rng.spawn(count)):
                name = f"MUR{s + 1:02d}{i + 1:03d}"
                head = posed(anatomy, case_rng)
                tumour = grow(head, profile, case_rng)
                distractors = mimics(head, case_rng)
                if not (folder / name).is_dir():
                    visit = for_case(scanner, case_rng)
                    channels = render(head, tumour, distractors, visit, case_rng)
                    _write_case(folder, name, naming, channels, tumour.labels, anatomy.affine)
                voxels = np.bincount(tumour.labels.ravel(), minlength=4)[1:]
                cases.append(
                    {
                        "case": name,
                        "centre_mm": [round(c, 1) for c in tumour.centre_mm],
                        "radius_mm": round(tumour.radius_mm, 1),
                        "enhancement": round(tumour.enhancement, 2),
                        "voxels_ncr_ed_et": [int(v) for v in voxels],
                    }
                )
                progress.advance(task)
            manifest["sites"].append(  # type: ignore[attr-defined]
                {
                    "site": folder.name,
                    "cases": count,
                    "tumour": {
                        "radius_mm": list(profile.radius_mm),
                        "side": profile.side,
                        "front": round(profile.front, 3),
                        "annotator": profile.annotator,
                    },
                    "scanner": {
                        "scale": [round(v, 1) for v in scanner.scale],
                        "bias": round(scanner.bias, 3),
                        "noise": round(scanner.noise, 4),
                        "blur_vox": [round(v, 2) for v in scanner.blur],
                    },
                    "lesions": cases,
                }
            )
    atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, default=4, help="hospitals (default 4)")
    parser.add_argument(
        "--cases-per-site", type=int, default=16, help="mean cases a site holds (default 16)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write site-1, site-2, … into"
    )
    parser.add_argument(
        "--naming", choices=sorted(NAMINGS), default="2021", help="BraTS file naming (default 2021)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resolution", type=int, choices=(1, 2), default=2, help="voxel size in mm (default 2)"
    )
    parser.add_argument(
        "--imbalance",
        type=float,
        default=0.5,
        help="sites hold (1±imbalance)·mean cases, largest first (default 0.5; 0 for equal sites)",
    )


def run(args: argparse.Namespace) -> int:
    if args.sites < 1 or args.cases_per_site < 1:
        raise ConfigError("--sites and --cases-per-site must be at least 1")
    if not 0.0 <= args.imbalance < 1.0:
        raise ConfigError(f"--imbalance {args.imbalance} must be in [0, 1)")
    manifest = make(
        args.out,
        args.sites,
        args.cases_per_site,
        args.naming,
        args.seed,
        args.resolution,
        args.imbalance,
    )
    counts = ", ".join(f"{site['site']} {site['cases']}" for site in manifest["sites"])  # type: ignore[attr-defined]
    print(
        f"{args.out}: BraTS {args.naming} cases at {args.resolution} mm ({counts}); "
        "manifest.json lists every lesion"
    )
    return 0


COMMAND = Command(
    "make-brats",
    "write BraTS-layout NIfTI cases for several sites on MNI152 anatomy",
    add_arguments,
    run,
)

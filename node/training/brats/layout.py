"""Where a hospital's BraTS-layout cases are and which file is which.

A site keeps one folder per case, as the BraTS challenges distribute them, in one of two
namings:

- 2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1 necrotic core (NCR),
  2 edema (ED), 4 enhancing tumour (ET);
- 2023: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 1 NCR, 2 ED, 3 ET.

Both are read into one canonical form: channels in the order T1, T1ce, T2, FLAIR, and
labels 0 background, 1 NCR, 2 ED, 3 ET. The naming is told from each case's own files,
so a folder may mix cases of both years (sites often add new cases to old ones). ``.nii``
is accepted beside ``.nii.gz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError

# The canonical channel order; every naming maps its files onto it.
CHANNELS = ("t1", "t1ce", "t2", "flair")
# Canonical labels: what the model predicts, whatever the naming on disk.
BACKGROUND, NCR, ED, ET = 0, 1, 2, 3
LABEL_NAMES = {NCR: "necrotic core", ED: "edema", ET: "enhancing tumour"}


@dataclass(frozen=True)
class Naming:
    """One BraTS file naming: the separator, each channel's suffix and the label codes."""

    year: str
    separator: str
    suffixes: tuple[str, str, str, str]  # in CHANNELS order
    labels: dict[int, int]  # label on disk → canonical label (background 0 → 0)

    def path(self, folder: Path, suffix: str, extension: str = ".nii.gz") -> Path:
        return folder / f"{folder.name}{self.separator}{suffix}{extension}"


NAMINGS = {
    "2021": Naming("2021", "_", ("t1", "t1ce", "t2", "flair"), {0: 0, 1: NCR, 2: ED, 4: ET}),
    "2023": Naming("2023", "-", ("t1n", "t1c", "t2w", "t2f"), {0: 0, 1: NCR, 2: ED, 3: ET}),
}
SEGMENTATION = "seg"
EXTENSIONS = (".nii.gz", ".nii")


class CaseError(ConfigError):
    """One case cannot be used; ``case`` and ``file`` name it. The run skips it."""

    def __init__(self, case: str, file: str, problem: str) -> None:
        super().__init__(f"case {case}: {file}: {problem}")
        self.case, self.file, self.problem = case, file, problem


@dataclass(frozen=True)
class CaseFiles:
    """The five files of one case: four channels in CHANNELS order, then the labels."""

    name: str
    naming: Naming
    channels: tuple[Path, Path, Path, Path]
    segmentation: Path


def _find(folder: Path, naming: Naming, suffix: str) -> Path | None:
    for extension in EXTENSIONS:
        path = naming.path(folder, suffix, extension)
        if path.is_file():
            return path
    return None


def naming_of(folder: Path) -> Naming:
    """The naming whose files this case folder holds most of; a tie is no naming at all."""
    counts = {
        year: sum(_find(folder, n, s) is not None for s in (*n.suffixes, SEGMENTATION))
        for year, n in NAMINGS.items()
    }
    best = max(counts.values())
    years = [year for year, count in counts.items() if count == best]
    if best == 0 or len(years) > 1:
        expected = " or ".join(
            naming.path(folder, naming.suffixes[-1]).name for naming in NAMINGS.values()
        )
        raise CaseError(folder.name, folder.name, f"no BraTS files (expected e.g. {expected})")
    return NAMINGS[years[0]]


def case_files(folder: Path) -> CaseFiles:
    """The case's files; a missing one raises :class:`CaseError` naming the file."""
    naming = naming_of(folder)
    found: list[Path] = []
    for suffix in (*naming.suffixes, SEGMENTATION):
        path = _find(folder, naming, suffix)
        if path is None:
            missing = naming.path(folder, suffix).name
            raise CaseError(folder.name, missing, f"missing ({naming.year} naming)")
        found.append(path)
    t1, t1ce, t2, flair, seg = found
    return CaseFiles(folder.name, naming, (t1, t1ce, t2, flair), seg)


def case_folders(root: Path) -> list[Path]:
    """Every case folder under ``root`` (its subfolders, sorted by name)."""
    if not root.is_dir():
        raise ConfigError(f"BraTS folder {root} not found (expected one folder per case)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"BraTS folder {root} holds no case folders")
    return folders

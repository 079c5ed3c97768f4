"""A hospital's brain MRI in the BraTS layout: files (:mod:`.layout`), checked and
preprocessed volumes (:mod:`.volumes`), training patches (:mod:`.patches`) and a site's
whole folder (:func:`load_site_cases`)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError
from node.training.brats.layout import CaseError, case_files, case_folders
from node.training.brats.volumes import Case, read_case


@dataclass(frozen=True)
class SiteCases:
    """The cases a site could use, and one line for each case it skipped."""

    cases: tuple[Case, ...]
    skipped: tuple[str, ...]


def load_site_cases(root: Path, report: Callable[[str], None] | None = None) -> SiteCases:
    """Every usable case under ``root``. A missing, damaged or mismatched file skips its
    case with one line naming the case and the file (passed to ``report`` as it happens,
    so a long read shows its problems early) and the rest load."""
    cases: list[Case] = []
    skipped: list[str] = []
    for folder in case_folders(root):
        try:
            cases.append(read_case(case_files(folder)))
        except CaseError as exc:
            line = f"skipped {exc}"
            skipped.append(line)
            if report is not None:
                report(line)
    return SiteCases(tuple(cases), tuple(skipped))


HELD_OUT = 0.2


def split_cases(cases: Sequence[Case], seed: int) -> tuple[list[Case], list[Case]]:
    """(training, held-out) cases: about a fifth held out, at least one each side. The
    choice depends only on the public seed and the case names, so a node and the
    simulator hold out the same cases of a site, whatever order they were read in."""
    if len(cases) < 2:
        raise ConfigError(
            "a site needs at least 2 usable cases (one to train on, one held out), "
            f"has {len(cases)}"
        )
    ranked = sorted(cases, key=lambda c: zlib.crc32(f"{seed}:{c.name}".encode()))
    n_test = min(len(cases) - 1, max(1, round(HELD_OUT * len(cases))))
    test = sorted(ranked[:n_test], key=lambda c: c.name)
    train = sorted(ranked[n_test:], key=lambda c: c.name)
    return train, test


__all__ = ["Case", "CaseError", "SiteCases", "load_site_cases", "split_cases"]

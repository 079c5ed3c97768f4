"""Datasets by name, all on local disk (nothing is downloaded at run time).

- ``breast-cancer``: scikit-learn's Wisconsin diagnostic set (569 tumours, 30 features).
- ``ncctg-lung``: lifelines' NCCTG lung cancer cohort with its real institutions as sites.
  Target: death within one year of enrolment. Patients censored alive before day 365 have
  an unknown one-year outcome and are left out, rather than wrongly counted as survivors.
- ``csv:PATH`` with ``--target COLUMN`` (and ``--site-column`` for natural partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from node.training.data import BUILTIN_DATASETS
from sim.errors import DataError

DATASET_NAMES = (*BUILTIN_DATASETS, "csv:PATH")
ONE_YEAR_DAYS = 365


@dataclass(frozen=True)
class Table:
    """Raw features, a binary label per row, and optionally the site each row came from."""

    name: str
    features: pd.DataFrame
    labels: NDArray[np.int64]
    classes: tuple[str, ...]
    sites: NDArray[np.str_] | None = None


def load_dataset(spec: str, target: str | None = None, site_column: str | None = None) -> Table:
    """Load a dataset by spec; raise DataError naming the problem on bad input."""
    if spec == "breast-cancer":
        return _breast_cancer()
    if spec == "ncctg-lung":
        return _ncctg_lung()
    if spec.startswith("csv:"):
        return load_csv(Path(spec[4:]), target, site_column)
    raise DataError(f"unknown dataset {spec!r}; accepted: {', '.join(DATASET_NAMES)}")


def _breast_cancer() -> Table:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return Table("breast-cancer", bunch.data, labels, tuple(str(c) for c in bunch.target_names))


def _ncctg_lung() -> Table:
    from lifelines.datasets import load_lung

    frame = load_lung()
    frame = frame[frame["inst"].notna()]
    died_within_year = (frame["status"] == 1) & (frame["time"] <= ONE_YEAR_DAYS)
    known = died_within_year | (frame["time"] > ONE_YEAR_DAYS)
    frame = frame[known]
    labels = died_within_year[known].to_numpy(dtype=np.int64)
    sites = np.array([f"inst-{int(v)}" for v in frame["inst"]], dtype=np.str_)
    features = frame.drop(columns=["inst", "time", "status"]).reset_index(drop=True)
    return Table("ncctg-lung", features, labels, ("alive at 1 year", "died within 1 year"), sites)


def load_csv(path: Path, target: str | None, site_column: str | None) -> Table:
    """A CSV with a binary target column; other columns are features (numeric or categorical)."""
    if target is None:
        raise DataError("--dataset csv:PATH needs --target COLUMN naming the binary label column")
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}") from None
    columns = list(frame.columns)
    for role, column in (("--target", target), ("--site-column", site_column)):
        if column is not None and column not in frame.columns:
            raise DataError(
                f"{role} {column!r} is not a column of {path}; "
                f"columns: {', '.join(map(str, columns))}"
            )
    y = frame[target]
    if y.isna().any():
        raise DataError(
            f"target column {target!r} has {int(y.isna().sum())} missing values; "
            "drop or fill them first"
        )
    values = sorted(y.unique(), key=str)
    if len(values) != 2:
        shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
        raise DataError(
            f"target column {target!r} must be binary, found {len(values)} values: {shown}"
        )
    labels = (y == values[1]).to_numpy(dtype=np.int64)
    drop = [target] + ([site_column] if site_column else [])
    features = frame.drop(columns=drop)
    if features.shape[1] == 0:
        raise DataError(f"{path} has no feature columns besides the target")
    sites = frame[site_column].astype(str).to_numpy(dtype=np.str_) if site_column else None
    return Table(
        f"csv:{path.name}", features.reset_index(drop=True), labels, tuple(map(str, values)), sites
    )

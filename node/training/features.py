"""Table rows to model features, the same way at a node and in the simulator.

Numeric columns are standardised with one mean and standard deviation (missing values
imputed with the mean, so they encode as 0); every other column is one-hot over a fixed
category list (missing values are a category of their own). Every site must encode with
the *same* statistics and categories, or the same record means different inputs at
different sites and the model dimension itself may differ.

The statistics are federated: each site computes only :class:`Moments` (count, Σx and
Σx² of its non-missing values per numeric column, and the category values it has seen),
and the consortium adds them: ``Featurizer.from_moments(sum(moments))``. The simulator
adds every site's moments itself; a consortium adds them with ``murmur data features``
and gives every site the result as ``[data] features``. Sums of per-site moments are
what a secure sum would compute; adding them at join through the exchange is open work
(docs/architecture.md), and the category values are names that the union reveals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from murmur.files import atomic_write
from node.errors import ConfigError

MISSING = "<missing>"
FORMAT = "murmur-features/1"
MOMENTS_FORMAT = "murmur-moments/1"


def split_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) column names, in the frame's order."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    return numeric, [c for c in frame.columns if c not in numeric]


def _categories(column: pd.Series) -> set[str]:
    return {str(v) for v in column.fillna(MISSING)}


@dataclass(frozen=True)
class Moments:
    """One site's (or several sites' summed) per-column statistics; ``a + b`` adds them."""

    numeric: tuple[str, ...]
    count: NDArray[np.float64]
    total: NDArray[np.float64]
    squares: NDArray[np.float64]
    categories: dict[str, tuple[str, ...]]
    classes: tuple[str, ...] = ()  # label values seen (as text), sorted

    @classmethod
    def of(
        cls,
        frame: pd.DataFrame,
        numeric: list[str],
        categorical: list[str],
        labels: pd.Series | None = None,
    ) -> Moments:
        values = frame[numeric].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        return cls(
            tuple(numeric),
            present.sum(0).astype(np.float64),
            np.where(present, values, 0.0).sum(0),
            np.where(present, values**2, 0.0).sum(0),
            {c: tuple(sorted(_categories(frame[c]))) for c in categorical},
            () if labels is None else tuple(sorted({str(v) for v in labels})),
        )

    def __add__(self, other: Moments) -> Moments:
        if self.numeric != other.numeric or self.categories.keys() != other.categories.keys():
            raise ConfigError(
                "moments of different tables: columns "
                f"{list(self.numeric) + list(self.categories)} vs "
                f"{list(other.numeric) + list(other.categories)}"
            )
        return Moments(
            self.numeric,
            self.count + other.count,
            self.total + other.total,
            self.squares + other.squares,
            {
                c: tuple(sorted(set(v) | set(other.categories[c])))
                for c, v in self.categories.items()
            },
            tuple(sorted(set(self.classes) | set(other.classes))),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MOMENTS_FORMAT,
            "numeric": list(self.numeric),
            "count": self.count.tolist(),
            "total": self.total.tolist(),
            "squares": self.squares.tolist(),
            "categories": {c: list(v) for c, v in self.categories.items()},
            "classes": list(self.classes),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: object) -> Moments:
        try:
            if raw.get("format") != MOMENTS_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {MOMENTS_FORMAT!r}")
            numeric = tuple(str(c) for c in raw["numeric"])
            arrays = [np.asarray(raw[k], dtype=np.float64) for k in ("count", "total", "squares")]
            if any(a.shape != (len(numeric),) for a in arrays):
                raise ValueError("count, total and squares need one value per numeric column")
            categories = {str(c): tuple(map(str, v)) for c, v in raw["categories"].items()}
            classes = tuple(map(str, raw.get("classes", [])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: not Murmur column moments ({exc})") from None
        return cls(numeric, arrays[0], arrays[1], arrays[2], categories, classes)


def total(moments: Iterable[Moments]) -> Moments:
    """The sum of several sites' moments (at least one)."""
    items = list(moments)
    if not items:
        raise ConfigError("no moments to add")
    out = items[0]
    for m in items[1:]:
        out = out + m
    return out


@dataclass(frozen=True)
class Featurizer:
    """One consortium-wide encoding: a mean and std per numeric column, categories per
    categorical column."""

    numeric: tuple[str, ...]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    categories: dict[str, tuple[str, ...]]
    classes: tuple[str, ...] = ()  # the label values, as text; class k is classes[k]

    @classmethod
    def from_moments(cls, m: Moments) -> Featurizer:
        safe = np.maximum(m.count, 1.0)
        mean = m.total / safe
        std = np.sqrt(np.maximum(m.squares / safe - mean**2, 0.0))
        std = np.where(std > 1e-12, std, 1.0)
        return cls(m.numeric, mean, std, dict(m.categories), m.classes)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categories]

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    def encode(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """Rows of ``frame`` (which must hold every column) as (rows, width) features."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ConfigError(f"columns {missing} are in the consortium's features but not here")
        for c in self.numeric:
            if not pd.api.types.is_numeric_dtype(frame[c]):
                raise ConfigError(f"column {c!r} is numeric in the consortium's features, not here")
        num = frame[list(self.numeric)].to_numpy(dtype=np.float64)
        num = np.where(np.isnan(num), self.mean, num)
        blocks = [(num - self.mean) / self.std]
        for c, values in self.categories.items():
            seen = frame[c].fillna(MISSING).astype(str).to_numpy()
            blocks.append((seen[:, None] == np.array(values)[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "numeric": list(self.numeric),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "categories": {c: list(v) for c, v in self.categories.items()},
            "classes": list(self.classes),
        }

    def save(self, path: Path) -> None:
        atomic_write(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> Featurizer:
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT!r}")
            numeric = tuple(str(c) for c in raw["numeric"])
            mean = np.asarray(raw["mean"], dtype=np.float64)
            std = np.asarray(raw["std"], dtype=np.float64)
            if mean.shape != (len(numeric),) or std.shape != mean.shape or not (std > 0).all():
                raise ValueError("mean and std need one value per numeric column, std > 0")
            categories = {str(c): tuple(map(str, v)) for c, v in raw["categories"].items()}
            classes = tuple(map(str, raw["classes"]))
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"features file {path}: {exc}") from None
        return cls(numeric, mean, std, categories, classes)

"""A site's own data: ``npz:PATH`` (arrays ``x``, ``y``; optional held-out ``test_x``,
``test_y``) or ``csv:PATH`` with a label column, rows with a missing label dropped.

A CSV is encoded by :mod:`node.training.features`, the code the simulator uses: with the
consortium's statistics and categories (``[data] features``), numeric columns
standardised and mean-imputed, other columns one-hot, labels indexed by the
consortium's class list — so the same CSV gives the same features at a node and in the
simulator. Without them, this site's own statistics, numeric columns only (a column
that is not numeric is refused: one-hot needs the consortium's category list), and the
labels this site holds. Held-out rows (``[data] eval``) are encoded with the training
rows' encoding, never with statistics of their own.

``builtin:NAME`` (one of :data:`BUILTIN_DATASETS`) is for trying Murmur out: ``murmur
node`` gives each member the shard at its position in ``members`` of the public split,
written once to the state directory as npz, and scores it on the pooled held-out rows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from node.errors import ConfigError
from node.training.features import Featurizer, Moments, split_columns

BUILTIN_DATASETS = ("breast-cancer", "ncctg-lung")


@dataclass(frozen=True)
class SiteData:
    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    encoding: Featurizer | None = None  # how a CSV's rows became x (held-out rows reuse it)

    @property
    def label_counts(self) -> list[int]:
        return [int((self.y == c).sum()) for c in range(self.n_classes)]


def load_site_data(
    source: str, target: str | None = None, split: str = "", encoding: Featurizer | None = None
) -> SiteData:
    kind, _, path_text = source.partition(":")
    if kind == "builtin":
        raise ConfigError(f"{source}: built-in sets are prepared by `murmur node` (sim.builtin)")
    path = Path(path_text)
    if not path.exists():
        raise ConfigError(f"data file {path} not found")
    if kind == "npz":
        try:
            with np.load(path) as arrays:
                x, y = arrays[f"{split}x"], arrays[f"{split}y"]
                n_classes = int(arrays["n_classes"]) if "n_classes" in arrays else int(y.max()) + 1
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: not a Murmur data file ({exc})") from None
        return _checked(x, y, n_classes, path)
    if kind == "csv":
        return _from_csv(path, target, encoding)
    raise ConfigError(f"data source {source!r}: expected csv:PATH, npz:PATH or builtin:NAME")


def read_csv_table(path: Path, target: str | None) -> tuple[pd.DataFrame, pd.Series]:
    """A CSV's feature columns and its labels (as text), rows with no label left out."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read CSV ({exc})") from None
    if target is None or target not in frame.columns:
        raise ConfigError(f"{path}: label column {target!r} not found; columns: {list(frame)}")
    frame = frame.dropna(subset=[target])
    return frame.drop(columns=[target]), frame[target].astype(str)


def csv_moments(path: Path, target: str | None) -> Moments:
    """This site's column moments (:mod:`node.training.features`): no row leaves in them."""
    features, labels = read_csv_table(path, target)
    numeric, categorical = split_columns(features)
    return Moments.of(features, numeric, categorical, labels)


def _from_csv(path: Path, target: str | None, encoding: Featurizer | None) -> SiteData:
    features, labels = read_csv_table(path, target)
    if encoding is None:
        numeric, categorical = split_columns(features)
        if categorical:
            raise ConfigError(
                f"{path}: columns {categorical} are not numeric; one-hot encoding needs the "
                "consortium's category list: give [data] features (murmur data features), "
                "or drop those columns"
            )
        local = Moments.of(features, numeric, [], labels)
        encoding = Featurizer.from_moments(local)
    classes = list(encoding.classes)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ConfigError(f"{path}: labels {unknown} are not among the classes {classes}")
    if len(classes) < 2:
        raise ConfigError(f"{path}: label column {target!r} has fewer than two classes")
    y = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    x = encoding.encode(features).astype(np.float32)
    return replace(_checked(x, y, len(classes), path), encoding=encoding)


def _checked(x: np.ndarray, y: np.ndarray, n_classes: int, path: Path) -> SiteData:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{path}: need a (rows, features) x and one label per row")
    if not np.isfinite(x).all():
        raise ConfigError(f"{path}: features contain NaN or infinite values")
    return SiteData(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
        n_classes,
    )

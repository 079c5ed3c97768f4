"""A site's own data: ``npz:PATH`` (arrays ``x``, ``y``; optional held-out ``test_x``,
``test_y``) or ``csv:PATH`` with a label column (numeric columns standardized with this
site's statistics, missing values mean-imputed, rows with a missing label dropped).

``builtin:NAME`` (one of :data:`BUILTIN_DATASETS`) is for trying Murmur out: ``murmur
node`` gives each member the shard at its position in ``members`` of the public split,
written once to the state directory as npz, and scores it on the pooled held-out rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from node.errors import ConfigError

BUILTIN_DATASETS = ("breast-cancer", "ncctg-lung")


@dataclass(frozen=True)
class SiteData:
    x: torch.Tensor
    y: torch.Tensor
    n_classes: int

    @property
    def label_counts(self) -> list[int]:
        return [int((self.y == c).sum()) for c in range(self.n_classes)]


def load_site_data(source: str, target: str | None = None, split: str = "") -> SiteData:
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
        return _from_csv(path, target)
    raise ConfigError(f"data source {source!r}: expected csv:PATH, npz:PATH or builtin:NAME")


def _from_csv(path: Path, target: str | None) -> SiteData:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read CSV ({exc})") from None
    if target is None or target not in frame.columns:
        raise ConfigError(f"{path}: label column {target!r} not found; columns: {list(frame)}")
    frame = frame.dropna(subset=[target])
    labels, classes = pd.factorize(frame[target], sort=True)
    if len(classes) < 2:
        raise ConfigError(f"{path}: label column {target!r} has fewer than two classes")
    features = frame.drop(columns=[target]).select_dtypes("number")
    features = features.fillna(features.mean()).fillna(0.0)
    std = features.std().replace(0.0, 1.0).fillna(1.0)
    x = ((features - features.mean()) / std).to_numpy(np.float32)
    return _checked(x, labels.astype(np.int64), len(classes), path)


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

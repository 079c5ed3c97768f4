"""Per-node train/held-out split and feature preparation with federated statistics.

No site reveals rows: each node contributes only count, Σx and Σx² per numeric column
(and the set of category values it has seen) computed on its training rows; the
consortium combines them into one mean/std for standardization and mean imputation,
and one category list for one-hot encoding — exactly what a secure sum would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from sim.data import Table

HELD_OUT = 0.2
MISSING = "<missing>"


@dataclass(frozen=True)
class FederatedData:
    """Each node's training and held-out tensors, ready for the trainers."""

    train: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]
    node_names: list[str]
    n_features: int
    n_classes: int

    def pooled(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.train if which == "train" else self.test
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def label_counts(self) -> list[list[int]]:
        return [torch.bincount(y, minlength=self.n_classes).tolist() for _, y in self.train]


def split_held_out(
    parts: list[NDArray[np.int64]], rng: np.random.Generator
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Each node keeps ~20% of its rows (at least one) as held-out test data."""
    out = []
    for rows in parts:
        shuffled = rng.permutation(rows)
        n_test = max(1, round(HELD_OUT * len(rows)))
        out.append((np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])))
    return out


def prepare(
    table: Table, parts: list[NDArray[np.int64]], names: list[str], seed: int
) -> FederatedData:
    rng = np.random.default_rng(seed + 17)
    splits = split_held_out(parts, rng)
    numeric = [
        c for c in table.features.columns if pd.api.types.is_numeric_dtype(table.features[c])
    ]
    categorical = [c for c in table.features.columns if c not in numeric]
    mean, std = _federated_moments(table.features[numeric], [tr for tr, _ in splits])
    categories = {
        c: sorted({str(v) for tr, _ in splits for v in table.features[c].iloc[tr].fillna(MISSING)})
        for c in categorical
    }

    def encode(rows: NDArray[np.int64]) -> torch.Tensor:
        frame = table.features.iloc[rows]
        num = frame[numeric].to_numpy(dtype=np.float64)
        num = np.where(np.isnan(num), mean, num)
        blocks = [(num - mean) / std]
        for c in categorical:
            values = frame[c].fillna(MISSING).astype(str).to_numpy()
            blocks.append((values[:, None] == np.array(categories[c])[None, :]).astype(np.float64))
        return torch.from_numpy(np.concatenate(blocks, axis=1)).float()

    def labels(rows: NDArray[np.int64]) -> torch.Tensor:
        return torch.from_numpy(table.labels[rows])

    train = [(encode(tr), labels(tr)) for tr, _ in splits]
    test = [(encode(te), labels(te)) for _, te in splits]
    return FederatedData(train, test, names, int(train[0][0].shape[1]), len(table.classes))


def _federated_moments(
    frame: pd.DataFrame, train_rows: list[NDArray[np.int64]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Combine per-node (count, Σx, Σx²) of non-missing values into a global mean and std."""
    width = frame.shape[1]
    count, total, squares = np.zeros(width), np.zeros(width), np.zeros(width)
    for rows in train_rows:
        values = frame.iloc[rows].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        count += present.sum(0)
        total += np.where(present, values, 0.0).sum(0)
        squares += np.where(present, values**2, 0.0).sum(0)
    safe = np.maximum(count, 1.0)
    mean = total / safe
    var = np.maximum(squares / safe - mean**2, 0.0)
    std = np.sqrt(var)
    return mean, np.where(std > 1e-12, std, 1.0)


def dirichlet_sites(
    dataset: str = "breast-cancer", nodes: int = 16, alpha: float = 0.5, seed: int = 0
) -> FederatedData:
    """A built-in dataset over ``nodes`` sites with Dirichlet(α) label skew: the split the
    demo, the benchmarks and the tests share (Wisconsin, 16 sites, α = 0.5, seed 0)."""
    from sim.data import load_dataset
    from sim.partition import dirichlet

    table = load_dataset(dataset)
    parts = dirichlet(table.labels, nodes, alpha, np.random.default_rng(seed))
    return prepare(table, parts, [f"node-{i}" for i in range(nodes)], seed)

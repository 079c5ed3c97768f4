"""Per-node train/held-out split and feature preparation with federated statistics.

No site reveals rows: each node contributes only count, Σx and Σx² per numeric column
(and the set of category values it has seen) computed on its training rows; the
consortium combines them into one mean/std for standardization and mean imputation,
and one category list for one-hot encoding (:mod:`node.training.features`, the same
code a node encodes its CSV with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from node.training.features import Featurizer, Moments, split_columns, total
from sim.data import Table

HELD_OUT = 0.2


@dataclass(frozen=True)
class FederatedData:
    """Each node's training and held-out tensors, ready for the trainers."""

    train: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]
    node_names: list[str]
    n_features: int
    n_classes: int

    def first(self, n: int) -> FederatedData:
        """The first ``n`` sites of this split."""
        return FederatedData(
            self.train[:n], self.test[:n], self.node_names[:n], self.n_features, self.n_classes
        )

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
    numeric, categorical = split_columns(table.features)
    moments = total(Moments.of(table.features.iloc[tr], numeric, categorical) for tr, _ in splits)
    featurizer = Featurizer.from_moments(moments)

    def encode(rows: NDArray[np.int64]) -> torch.Tensor:
        return torch.from_numpy(featurizer.encode(table.features.iloc[rows])).float()

    def labels(rows: NDArray[np.int64]) -> torch.Tensor:
        return torch.from_numpy(table.labels[rows])

    train = [(encode(tr), labels(tr)) for tr, _ in splits]
    test = [(encode(te), labels(te)) for _, te in splits]
    return FederatedData(train, test, names, int(train[0][0].shape[1]), len(table.classes))


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

"""Splitting a table's rows among nodes: ``iid``, Dirichlet label skew, ``natural`` sites."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sim.errors import DataError

PARTITION_NAMES = ("iid", "dirichlet (--alpha)", "natural (--site-column or a dataset with sites)")
MIN_ROWS_PER_NODE = 4


def iid(n_rows: int, nodes: int, rng: np.random.Generator) -> list[NDArray[np.int64]]:
    _need(n_rows, nodes)
    return [part.astype(np.int64) for part in np.array_split(rng.permutation(n_rows), nodes)]


def dirichlet(
    labels: NDArray[np.int64], nodes: int, alpha: float, rng: np.random.Generator, tries: int = 200
) -> list[NDArray[np.int64]]:
    """Per class, shares over nodes ~ Dir(α): small α gives each node few classes.

    Redrawn until every node has at least MIN_ROWS_PER_NODE rows, so each can train and
    keep a held-out part.
    """
    if alpha <= 0:
        raise DataError(f"--alpha must be > 0, got {alpha}")
    _need(len(labels), nodes)
    classes = np.unique(labels)
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(nodes, alpha))
            cuts = (np.cumsum(shares) * len(rows)).astype(int)[:-1]
            for node, chunk in enumerate(np.split(rows, cuts)):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= MIN_ROWS_PER_NODE:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise DataError(
        f"could not give each of {nodes} nodes {MIN_ROWS_PER_NODE}+ rows with alpha={alpha}; "
        "use fewer nodes or a larger --alpha"
    )


def natural(
    sites: NDArray[np.str_] | None, min_rows: int = 10
) -> tuple[list[NDArray[np.int64]], list[str]]:
    """One node per site. Sites with fewer than ``min_rows`` rows are merged into one node
    named ``other(k sites)`` — too small to train or evaluate on alone."""
    if sites is None:
        raise DataError(
            "--split natural needs --site-column (or a dataset with sites, e.g. ncctg-lung)"
        )
    names, inverse, counts = np.unique(sites, return_inverse=True, return_counts=True)
    parts, labels = [], []
    small = [k for k, c in enumerate(counts) if c < min_rows]
    for k, name in enumerate(names):
        if k not in small:
            parts.append(np.flatnonzero(inverse == k).astype(np.int64))
            labels.append(str(name))
    if small:
        parts.append(np.flatnonzero(np.isin(inverse, small)).astype(np.int64))
        labels.append(f"other({len(small)} sites)")
    if len(parts) < 2:
        raise DataError("natural partition needs at least 2 sites")
    return parts, labels


def _need(n_rows: int, nodes: int) -> None:
    if nodes < 2:
        raise DataError(f"--nodes must be at least 2, got {nodes}")
    if n_rows < nodes * MIN_ROWS_PER_NODE:
        raise DataError(f"{n_rows} rows cannot give {nodes} nodes {MIN_ROWS_PER_NODE}+ rows each")

"""Mixing weights and their spectral properties.

Metropolis–Hastings weights W_ij = 1 / (1 + max(deg i, deg j)) on edges, W_ii = 1 − Σ_j W_ij,
are symmetric and doubly stochastic for any undirected graph, and each node can compute
its row from its own and its neighbours' degrees alone — no global knowledge needed.
The spectral gap 1 − |λ₂(W)| sets the linear rate at which gossip averaging contracts.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from numpy.typing import NDArray


def metropolis_hastings(graph: nx.Graph[int]) -> NDArray[np.float64]:
    """Dense N×N Metropolis–Hastings matrix of ``graph`` (nodes 0..N-1)."""
    n = graph.number_of_nodes()
    weights = np.zeros((n, n), dtype=np.float64)
    degree = dict(graph.degree())
    for u, v in graph.edges():
        w = 1.0 / (1.0 + max(degree[u], degree[v]))
        weights[u, v] = w
        weights[v, u] = w
    weights[np.diag_indices(n)] = 1.0 - weights.sum(axis=1)
    return weights


def spectral_gap(weights: NDArray[np.float64]) -> float:
    """1 − max(|λ₂|, |λ_N|) of a symmetric mixing matrix."""
    eigenvalues = np.linalg.eigvalsh(weights)
    eigenvalues = np.sort(np.abs(eigenvalues))[::-1]
    second = float(eigenvalues[1]) if eigenvalues.size > 1 else 0.0
    return 1.0 - second

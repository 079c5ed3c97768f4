"""The ``Topology`` interface: neighbours and weights of a node in a given round.

Static graphs return the same answer every round. ``MatchingSchedule`` is time-varying:
each round it picks one random maximal matching of a base graph from a public seed, so
every node derives the same matching independently; each matched pair averages with
weight 1/2 (the classic randomized pairwise gossip), unmatched nodes keep their model.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Protocol

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from topology.graphs import build_graph
from topology.weights import metropolis_hastings


class Topology(Protocol):
    """Who node ``node`` talks to in ``round``, and with what weights."""

    n: int
    static: bool

    def neighbours(self, node: int, round: int) -> list[int]: ...

    def weights(self, node: int, round: int) -> dict[int, float]:
        """Row ``node`` of W(round) as {peer: weight}, including the node itself."""
        ...

    def matrix(self, round: int) -> NDArray[np.float64]:
        """The full W(round); used by simulators and tests."""
        ...


class StaticTopology:
    """A fixed graph with Metropolis–Hastings weights."""

    static = True

    def __init__(self, graph: nx.Graph[int]) -> None:
        self.graph = graph
        self.n = graph.number_of_nodes()
        self._w = metropolis_hastings(graph)

    def neighbours(self, node: int, round: int) -> list[int]:
        return sorted(self.graph.neighbors(node))

    def weights(self, node: int, round: int) -> dict[int, float]:
        row = {j: float(self._w[node, j]) for j in self.neighbours(node, round)}
        row[node] = float(self._w[node, node])
        return row

    def matrix(self, round: int) -> NDArray[np.float64]:
        return self._w


class MatchingSchedule:
    """One random maximal matching of ``base`` per round, derived from a public seed."""

    static = False

    def __init__(self, base: nx.Graph[int], seed: int) -> None:
        self.graph = base
        self.n = base.number_of_nodes()
        self.seed = seed
        self._matching = lru_cache(maxsize=4)(self._compute_matching)

    def _compute_matching(self, round: int) -> dict[int, int]:
        rng = random.Random(f"{self.seed}/matching/{round}")
        edges = sorted(tuple(sorted(e)) for e in self.graph.edges())
        rng.shuffle(edges)
        partner: dict[int, int] = {}
        for u, v in edges:
            if u not in partner and v not in partner:
                partner[u] = v
                partner[v] = u
        return partner

    def neighbours(self, node: int, round: int) -> list[int]:
        partner = self._matching(round).get(node)
        return [] if partner is None else [partner]

    def weights(self, node: int, round: int) -> dict[int, float]:
        partner = self._matching(round).get(node)
        return {node: 1.0} if partner is None else {node: 0.5, partner: 0.5}

    def matrix(self, round: int) -> NDArray[np.float64]:
        w = np.eye(self.n)
        for u, v in self._matching(round).items():
            w[u, u] = 0.5
            w[u, v] = 0.5
        return w


def build_topology(spec: str, n: int, seed: int = 0) -> StaticTopology | MatchingSchedule:
    """Parse a topology spec; ``matching`` or ``matching:BASE`` gives the time-varying schedule."""
    if spec == "matching" or spec.startswith("matching:"):
        base_spec = spec.partition(":")[2] or "complete"
        return MatchingSchedule(build_graph(base_spec, n, seed), seed)
    return StaticTopology(build_graph(spec, n, seed))

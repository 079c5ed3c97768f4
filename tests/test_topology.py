from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from topology import (
    DisconnectedGraphError,
    UnknownTopologyError,
    build_graph,
    build_topology,
    metropolis_hastings,
    spectral_gap,
)
from topology.errors import EdgeListError

SPECS = [
    "ring",
    "torus",
    "complete",
    "star",
    "regular:4",
    "erdos-renyi:0.4",
    "watts-strogatz:4:0.2",
    "exponential",
]


@pytest.mark.parametrize("spec", SPECS)
def test_metropolis_weights_symmetric_doubly_stochastic(spec: str) -> None:
    graph = build_graph(spec, 16, seed=3)
    w = metropolis_hastings(graph)
    assert np.allclose(w, w.T)
    assert np.allclose(w.sum(0), 1.0) and np.allclose(w.sum(1), 1.0)
    assert (w >= 0).all()
    # Only edges and the diagonal carry weight.
    adjacency = nx.to_numpy_array(graph, nodelist=range(16)) > 0
    assert not (w[~adjacency & ~np.eye(16, dtype=bool)]).any()
    assert 0.0 < spectral_gap(w) <= 1.0


def test_spectral_gap_orders_graphs() -> None:
    gaps = {
        s: spectral_gap(metropolis_hastings(build_graph(s, 16)))
        for s in ("ring", "exponential", "complete")
    }
    assert gaps["ring"] < gaps["exponential"] < gaps["complete"]


def test_matching_schedule_is_doubly_stochastic_and_varies() -> None:
    topo = build_topology("matching:ring", 10, seed=1)
    mats = [topo.matrix(t) for t in range(5)]
    for w in mats:
        assert np.allclose(w, w.T) and np.allclose(w.sum(1), 1.0)
        assert all(len(topo.neighbours(i, 0)) <= 1 for i in range(10))
    assert any(not np.array_equal(mats[0], m) for m in mats[1:])
    # Same seed, same schedule on every node.
    again = build_topology("matching:ring", 10, seed=1)
    assert np.array_equal(again.matrix(3), topo.matrix(3))


def test_disconnected_graph_refused() -> None:
    with pytest.raises(DisconnectedGraphError, match="disconnected"):
        build_graph("erdos-renyi:0.01", 30, seed=0)


def test_unknown_topology_lists_accepted_names() -> None:
    with pytest.raises(UnknownTopologyError, match="accepted: ring"):
        build_graph("hypercube", 8)


def test_edge_list_file(tmp_path: Path) -> None:
    path = tmp_path / "edges.txt"
    path.write_text("# a square\n0 1\n1 2\n2 3\n3 0\n")
    graph = build_graph(f"file:{path}", 4)
    assert graph.number_of_edges() == 4
    path.write_text("0 1\n2 3\n")
    with pytest.raises(DisconnectedGraphError):
        build_graph(f"file:{path}", 4)
    path.write_text("0 x\n")
    with pytest.raises(EdgeListError, match="expected 'u v'"):
        build_graph(f"file:{path}", 0)

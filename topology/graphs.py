"""Graph families for the communication topology, built with networkx.

Every builder returns an undirected simple graph on nodes 0..n-1 and is deterministic
for a given seed, so that all sites of a consortium (and every simulator run) derive the
same graph from the same configuration. Disconnected results are refused: gossip
averaging converges only on a connected graph.

Specifications are strings: ``ring``, ``torus``, ``complete``, ``star``,
``regular:D``, ``erdos-renyi:P``, ``watts-strogatz:K:P``, ``exponential``,
``file:PATH`` (one ``u v`` pair per line, ``#`` comments), and the time-varying
``matching`` / ``matching:BASE`` handled by :mod:`topology.schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import networkx as nx

from murmur.registry import Registry
from topology.errors import DisconnectedGraphError, EdgeListError, UnknownTopologyError

GraphBuilder = Callable[[int, int, list[str]], "nx.Graph[int]"]
"""(nodes, public seed, the spec's arguments after the name) → a graph on 0..n-1."""
TOPOLOGIES: Registry[GraphBuilder] = Registry("topology", UnknownTopologyError)


def register_topology(name: str, builder: GraphBuilder, form: str | None = None) -> None:
    """Make ``--topology name[:ARGS]`` / ``[consortium] topology`` build with ``builder``;
    connectivity is checked for every graph, whoever built it."""
    TOPOLOGIES.register(name, builder, form)


def _int_graph(graph: Any) -> nx.Graph[int]:
    """networkx builders are untyped; their nodes are the integers 0..n-1."""
    return cast("nx.Graph[int]", graph)


def _ring(n: int, _seed: int, _args: list[str]) -> nx.Graph[int]:
    return _int_graph(nx.cycle_graph(n) if n > 2 else nx.path_graph(n))


def _torus(n: int, _seed: int, _args: list[str]) -> nx.Graph[int]:
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    cols = n // rows
    if rows < 2 or cols < 3:
        raise UnknownTopologyError(
            f"torus needs N = R x C with R >= 2 and C >= 3 (got N={n}); use a ring for this N"
        )
    # R = 2 wraps each column onto itself: the prism C_C x K_2, degree 3.
    graph = nx.grid_2d_graph(rows, cols, periodic=True)
    return _int_graph(nx.convert_node_labels_to_integers(graph, ordering="sorted"))


def _complete(n: int, _seed: int, _args: list[str]) -> nx.Graph[int]:
    return _int_graph(nx.complete_graph(n))


def _star(n: int, _seed: int, _args: list[str]) -> nx.Graph[int]:
    return _int_graph(nx.star_graph(n - 1))


def _regular(n: int, seed: int, args: list[str]) -> nx.Graph[int]:
    degree = _int_arg(args, 0, "regular:D")
    if degree < 2 or degree >= n or (degree * n) % 2:
        raise UnknownTopologyError(
            f"regular:D needs 2 <= D < N and D*N even (got D={degree}, N={n})"
        )
    return _int_graph(nx.random_regular_graph(degree, n, seed=seed))


REDRAWS = 100


def _erdos_renyi(n: int, seed: int, args: list[str]) -> nx.Graph[int]:
    """G(n, p) from the seed; a disconnected draw is redrawn from seed + 1, seed + 2, …
    (the same sequence at every site), up to REDRAWS times."""
    p = _float_arg(args, 0, "erdos-renyi:P")
    graph = _int_graph(nx.gnp_random_graph(n, p, seed=seed))
    for k in range(1, REDRAWS):
        if nx.is_connected(graph):
            break
        graph = _int_graph(nx.gnp_random_graph(n, p, seed=seed + k))
    return graph


def _watts_strogatz(n: int, seed: int, args: list[str]) -> nx.Graph[int]:
    k = _int_arg(args, 0, "watts-strogatz:K:P")
    p = _float_arg(args, 1, "watts-strogatz:K:P")
    if k < 2 or k >= n:
        raise UnknownTopologyError(f"watts-strogatz:K:P needs 2 <= K < N (got K={k}, N={n})")
    return _int_graph(nx.connected_watts_strogatz_graph(n, k, p, seed=seed))


def _exponential(n: int, _seed: int, _args: list[str]) -> nx.Graph[int]:
    """Node i links to i + 2^k (mod n): O(log n) degree, spectral gap independent of n."""
    graph: nx.Graph[int] = nx.Graph()
    graph.add_nodes_from(range(n))
    hop = 1
    while hop < n:
        for i in range(n):
            j = (i + hop) % n
            if i != j:
                graph.add_edge(i, j)
        hop *= 2
    return graph


def _edge_list(n: int, _seed: int, args: list[str]) -> nx.Graph[int]:
    path = Path(":".join(args))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeListError(f"cannot read edge list {path}: {exc.strerror}") from exc
    graph: nx.Graph[int] = nx.Graph()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            u, v = (int(p) for p in parts)
        except ValueError:
            raise EdgeListError(
                f"{path}:{lineno}: expected 'u v' node indices, got {raw!r}"
            ) from None
        if u == v:
            raise EdgeListError(f"{path}:{lineno}: self-loop {u}-{v} is not allowed")
        graph.add_edge(u, v)
    nodes = sorted(graph.nodes)
    if nodes != list(range(len(nodes))):
        raise EdgeListError(f"{path}: nodes must be numbered 0..N-1 without gaps")
    if n and len(nodes) != n:
        raise EdgeListError(f"{path} has {len(nodes)} nodes but {n} were requested")
    return graph


for _name, _builder, _form in (
    ("ring", _ring, None),
    ("torus", _torus, None),
    ("complete", _complete, None),
    ("star", _star, None),
    ("regular", _regular, "regular:D"),
    ("erdos-renyi", _erdos_renyi, "erdos-renyi:P"),
    ("watts-strogatz", _watts_strogatz, "watts-strogatz:K:P"),
    ("exponential", _exponential, None),
    ("file", _edge_list, "file:PATH"),
):
    register_topology(_name, _builder, _form)
# Time-varying: built by topology.schedule over any static base graph.
TOPOLOGY_NAMES = (*TOPOLOGIES.forms(), "matching[:BASE]")


def _int_arg(args: list[str], i: int, form: str) -> int:
    try:
        return int(args[i])
    except (IndexError, ValueError):
        raise UnknownTopologyError(f"expected {form} with an integer parameter") from None


def _float_arg(args: list[str], i: int, form: str) -> float:
    try:
        value = float(args[i])
    except (IndexError, ValueError):
        raise UnknownTopologyError(f"expected {form} with a numeric parameter") from None
    if not 0.0 < value <= 1.0:
        raise UnknownTopologyError(f"{form}: probability must be in (0, 1], got {value}")
    return value


def build_graph(spec: str, n: int, seed: int = 0) -> nx.Graph[int]:
    """Build the static graph named by ``spec`` on ``n`` nodes; refuse disconnected graphs."""
    name, *args = spec.split(":")
    if name not in TOPOLOGIES:
        raise UnknownTopologyError(
            f"unknown topology {spec!r}; accepted: {', '.join(TOPOLOGY_NAMES)}"
        )
    builder = TOPOLOGIES.get(name)
    if name != "file" and n < 2:
        raise UnknownTopologyError(f"a topology needs at least 2 nodes, got {n}")
    graph = builder(n, seed, args)
    graph.remove_edges_from(nx.selfloop_edges(graph))
    if graph.number_of_nodes() == 0 or not nx.is_connected(graph):
        parts = nx.number_connected_components(graph) if graph.number_of_nodes() else 0
        raise DisconnectedGraphError(
            f"topology {spec!r} on {n} nodes is disconnected ({parts} components); "
            "gossip cannot reach consensus — raise the edge probability or degree"
        )
    return graph

"""What the node-runtime tests share: a few sites of a split, nodes on one memory network,
running them together, and reading their event logs."""

from __future__ import annotations

import asyncio
import io
import json

from node.runtime import Node
from sim import own_loops
from sim.prep import FederatedData


def subset(data: FederatedData, n: int) -> FederatedData:
    """The first ``n`` sites of a federated split."""
    return data.first(n)


def run_nodes(nodes: list[Node]) -> list[dict[str, object]]:
    return asyncio.run(own_loops.run_nodes(nodes))


def log_of(node: Node) -> str:
    assert isinstance(node.log.log_stream, io.StringIO)
    return node.log.log_stream.getvalue()


def events(node: Node, kind: str) -> list[dict[str, object]]:
    return [e for e in map(json.loads, log_of(node).splitlines()) if e["event"] == kind]

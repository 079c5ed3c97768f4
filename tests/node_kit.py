"""What the node-runtime tests share: a few sites of a split, nodes on one memory network,
running them together, and reading their event logs."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from crypto.identity import load_key
from node.config import load_config
from node.runtime import Node
from node.transport.memory import MemoryNetwork, MemoryTransport
from sim.prep import FederatedData


def subset(data: FederatedData, n: int) -> FederatedData:
    """The first ``n`` sites of a federated split."""
    return FederatedData(
        data.train[:n], data.test[:n], data.node_names[:n], data.n_features, data.n_classes
    )


def memory_nodes(
    paths: list[Path],
    transport: type[MemoryTransport] = MemoryTransport,
    network: MemoryNetwork | None = None,
) -> list[Node]:
    """One node per config, all on one memory network (a fresh one unless given), logs
    and status kept in memory."""
    network = network or MemoryNetwork()
    nodes = []
    for path in paths:
        config = load_config(path)
        link = transport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, link, log=io.StringIO(), status=io.StringIO()))
    return nodes


def run_nodes(nodes: list[Node]) -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(n.run() for n in nodes)))

    return asyncio.run(run())


def log_of(node: Node) -> str:
    assert isinstance(node.log.log_stream, io.StringIO)
    return node.log.log_stream.getvalue()


def events(node: Node, kind: str) -> list[dict[str, object]]:
    return [e for e in map(json.loads, log_of(node).splitlines()) if e["event"] == kind]

"""Simulate a consortium of your own PyTorch training loops, in one process.

The simulator for ``custom:`` sites: each :class:`~node.training.custom.TrainingLoop` runs
in a real :class:`~node.runtime.Node` (the round loop, exchange, checkpoints, DP and
secure aggregation a real site runs), the sites joined by the in-memory transport instead
of libp2p. The consortium is provisioned as ``murmur consortium init`` would (keys,
``site.toml`` per site, under ``out``), so a run can be inspected and resumed like a real
one, and each site's config can be copied to a real node unchanged but for its address.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crypto.identity import load_key
from node.config import load_config
from node.provision import init
from node.runtime import Node
from node.training.custom import TrainingLoop
from node.training.dp_config import DpConfig
from node.transport.memory import MemoryNetwork, MemoryTransport


@dataclass(frozen=True)
class LoopRun:
    """What each site finished with: its node's result (round, accuracy from your
    ``evaluate``, bytes sent, ε spent under DP) and its event log (JSON lines)."""

    name: str
    result: dict[str, Any]
    events: str


def loop_nodes(
    loops: Sequence[TrainingLoop],
    out: Path,
    *,
    rounds: int,
    topology: str = "ring",
    seed: int = 0,
    gossip: dict[str, Any] | None = None,
    privacy: DpConfig | None = None,
    faults: dict[str, Any] | None = None,
) -> list[tuple[str, Node, io.StringIO]]:
    """Provision the consortium under ``out`` and build one node per loop on one
    in-memory network: (name, node, its event log) per site, in the members' order."""
    names = [f"site-{i}" for i in range(len(loops))]
    addresses = {n: f"/memory/{n}" for n in names}
    init(out, names, topology=topology, seed=seed, addresses=addresses, data="custom:sim")
    network = MemoryNetwork()
    built = []
    for name, loop in zip(names, loops, strict=True):
        config = load_config(out / name / "site.toml").edit(
            site={"listen": addresses[name]},
            train={"rounds": rounds},
            gossip={"deadline_s": 2.0, **(gossip or {})},
            faults=faults or {},
        )
        config = replace(config, privacy=privacy)
        transport = MemoryTransport(network, load_key(config.site.key), config.site.listen)
        log = io.StringIO()
        built.append((name, Node(config, transport, log, io.StringIO(), loop=loop), log))
    return built


def memory_nodes(
    paths: Sequence[Path],
    transport: type[MemoryTransport] = MemoryTransport,
    network: MemoryNetwork | None = None,
) -> list[Node]:
    """One node per config file, all on one memory network (a fresh one unless given),
    their event logs and status lines kept in memory (``node.log``)."""
    network = network or MemoryNetwork()
    nodes = []
    for path in paths:
        config = load_config(path)
        link = transport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, link, log=io.StringIO(), status=io.StringIO()))
    return nodes


async def run_nodes(nodes: Sequence[Node]) -> list[dict[str, Any]]:
    """Every node's whole run, side by side on this event loop."""
    return list(await asyncio.gather(*(n.run() for n in nodes)))


def simulate_loops(
    loops: Sequence[TrainingLoop],
    out: Path,
    *,
    rounds: int,
    topology: str = "ring",
    seed: int = 0,
    gossip: dict[str, Any] | None = None,
    privacy: DpConfig | None = None,
) -> list[LoopRun]:
    """Run one site per loop for ``rounds`` rounds; ``gossip`` sets ``[gossip]`` keys
    (``compressor``, ``secure``, ``gamma``, …) at every site, ``privacy`` their
    ``[privacy]``. Refuses an ``out`` that already holds a consortium."""
    built = loop_nodes(
        loops, out, rounds=rounds, topology=topology, seed=seed, gossip=gossip, privacy=privacy
    )
    results = asyncio.run(run_nodes([node for _, node, _ in built]))
    return [
        LoopRun(name, result, log.getvalue())
        for (name, _, log), result in zip(built, results, strict=True)
    ]

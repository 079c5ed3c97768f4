"""The node runtime over the memory transport (fast) and as real processes (slow)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crypto.identity import load_key
from node.config import load_config
from node.frames import seal
from node.memory_transport import MemoryNetwork, MemoryTransport
from node.runtime import Node
from node.trainer import TrainConfig
from sim.consortium import ConsortiumSpec, write_consortium
from sim.faults import parse_crash
from sim.prep import FederatedData
from sim.process import run_processes
from topology import build_topology

TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16)


def _subset(data: FederatedData, n: int) -> FederatedData:
    return FederatedData(
        data.train[:n], data.test[:n], data.node_names[:n], data.n_features, data.n_classes
    )


def _nodes(paths: list[Path], network: MemoryNetwork, rounds: int | None = None) -> list[Node]:
    nodes = []
    for path in paths:
        config = load_config(path)
        if rounds is not None:
            config = type(config)(**{**config.__dict__, "rounds": rounds})
        transport = MemoryTransport(network, load_key(config.key), config.listen)
        nodes.append(Node(config, transport, log=io.StringIO()))
    return nodes


def test_memory_ring_learns_and_running_sums_stay_exact(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = _subset(wisconsin16, 4)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=30, train=TRAIN))
    nodes = _nodes(paths, MemoryNetwork())

    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(n.run() for n in nodes)))

    results = asyncio.run(run())
    assert all(float(r["accuracy"]) > 0.85 for r in results)  # type: ignore[arg-type]
    w = build_topology("ring", 4).matrix(0)
    xhat = torch.cat([n.state.xhat for n in nodes])
    expected = torch.from_numpy(w).float() @ xhat
    for i, node in enumerate(nodes):
        torch.testing.assert_close(node.state.s[0], expected[i], atol=1e-5, rtol=1e-5)


def test_restart_resumes_from_the_checkpoint(wisconsin16: FederatedData, tmp_path: Path) -> None:
    data = _subset(wisconsin16, 3)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=10, train=TRAIN))

    async def run(nodes: list[Node]) -> None:
        await asyncio.gather(*(n.run() for n in nodes))

    asyncio.run(run(_nodes(paths, MemoryNetwork(), rounds=4)))
    again = _nodes(paths, MemoryNetwork())
    asyncio.run(run(again))
    for node in again:
        assert isinstance(node.log_stream, io.StringIO)
        log = node.log_stream.getvalue().splitlines()
        start = json.loads(log[0])
        rounds = [json.loads(line)["round"] for line in log if '"event": "round"' in line]
        assert start["resumed"] and start["round"] == 4
        assert rounds[0] == 5 and rounds[-1] == 10


def test_bad_frames_are_counted_and_the_node_goes_on(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = _subset(wisconsin16, 3)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=8, train=TRAIN))
    network = MemoryNetwork()
    nodes = _nodes(paths, network)
    victim = nodes[0]
    attacker_key = load_key(load_config(paths[1]).key)

    async def attack() -> None:
        await asyncio.sleep(0.05)
        rogue = MemoryTransport(network, attacker_key, "/memory/rogue")
        await rogue.start()
        rogue.set_peers({victim.identity.peer_id: victim.config.listen})
        await rogue.send(victim.identity.peer_id, b"\x00garbage")  # malformed
        await rogue.send(victim.identity.peer_id, seal(attacker_key, 0, "update", b"\x93"))
        body = seal(attacker_key, 0, "update", b"x")
        fields = bytearray(body)
        fields[-1] ^= 1  # tampered signature
        await rogue.send(victim.identity.peer_id, bytes(fields))

    async def run() -> None:
        await asyncio.gather(attack(), *(n.run() for n in nodes))

    asyncio.run(run())
    assert victim.round == 8
    assert victim.rejected["malformed"] >= 2 and victim.rejected["forged"] >= 1


@pytest.mark.slow
def test_eight_processes_over_libp2p_match_in_process(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    from node.compress import parse_compressor
    from sim.engine import RunSpec, Simulation

    data = _subset(wisconsin16, 8)
    rounds = 60
    spec = ConsortiumSpec(rounds=rounds, train=TRAIN, eval_every=rounds)
    networked = run_processes(tmp_path / "fault-free", data, spec, [])
    sim = Simulation(
        data,
        build_topology("ring", 8),
        RunSpec(rounds, "mlp:32", TRAIN, None, 0, torch.device("cpu")),
    )
    inprocess = sim.run("murmur", parse_compressor("top-k:0.1"))
    gap = float(networked.final["accuracy_mean"] or 0) - float(
        inprocess.final["accuracy_mean"] or 0
    )
    assert abs(gap) <= 0.01 + 1e-9

    killed = run_processes(tmp_path / "killed", data, spec, [parse_crash("3@20:35")])
    assert (
        float(killed.final["accuracy_mean"] or 0)
        >= float(networked.final["accuracy_mean"] or 0) - 0.01
    )
    timeline = [
        json.loads(x) for x in (tmp_path / "killed" / "timeline.jsonl").read_text().splitlines()
    ]
    restarts = [e for e in timeline if e["event"] == "start" and e["node"] == 3 and e["resumed"]]
    assert restarts and restarts[0]["round"] >= 19
    assert np.isfinite(float(killed.final["round_latency_median_s"] or np.nan))

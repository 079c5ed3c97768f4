"""The node runtime over the memory transport (fast) and as real processes (slow)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crypto.identity import load_key
from node.config import NodeConfig, load_config
from node.errors import ConfigError
from node.runtime import Node
from node.training.trainer import TrainConfig
from node.transport.memory import MemoryNetwork, MemoryTransport
from node.wire.frames import seal
from sim.consortium import ConsortiumSpec, write_consortium
from sim.faults import parse_crash
from sim.prep import FederatedData
from sim.process import run_processes
from tests.node_kit import events, subset
from topology import build_topology

TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16)


def _nodes(
    paths: list[Path],
    network: MemoryNetwork,
    rounds: int | None = None,
    edit: Callable[[NodeConfig], NodeConfig] | None = None,
) -> list[Node]:
    nodes = []
    for path in paths:
        config = load_config(path)
        if rounds is not None:
            config = config.edit(train={"rounds": rounds})
        if edit is not None:
            config = edit(config)
        transport = MemoryTransport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, transport, log=io.StringIO()))
    return nodes


def test_memory_ring_learns_and_running_sums_stay_exact(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = subset(wisconsin16, 4)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=30, train=TRAIN))
    nodes = _nodes(paths, MemoryNetwork())

    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(n.run() for n in nodes)))

    results = asyncio.run(run())
    assert all(float(r["accuracy"]) > 0.85 for r in results)  # type: ignore[arg-type]
    _exact_sums(nodes, "ring")


def test_a_site_cut_off_from_every_neighbour_keeps_pace_instead_of_racing(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Site 0 comes up 1.5 s (7 deadlines) before the others. Alone, it goes on at one round
    per deadline, so the others find it a few rounds ahead, catch up, and every site mixes
    with both neighbours from then on. Racing on alone, it used to finish all its rounds
    before they started and never mixed at all."""
    data = subset(wisconsin16, 4)
    spec = ConsortiumSpec(rounds=30, train=TRAIN, deadline_s=0.2)
    nodes = _nodes(write_consortium(tmp_path, data, spec), MemoryNetwork())

    async def run() -> None:
        first = asyncio.create_task(nodes[0].run())
        await asyncio.sleep(1.5)
        await asyncio.gather(first, *(n.run() for n in nodes[1:]))

    asyncio.run(run())
    alone = [e for e in events(nodes[0], "round") if e["missed"] == 2]
    assert 3 <= len(alone) <= 10
    for node in nodes:
        assert [e["missed"] for e in events(node, "round")][-10:] == [0] * 10


def test_restart_resumes_from_the_checkpoint(wisconsin16: FederatedData, tmp_path: Path) -> None:
    data = subset(wisconsin16, 3)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=10, train=TRAIN))

    async def run(nodes: list[Node]) -> None:
        await asyncio.gather(*(n.run() for n in nodes))

    asyncio.run(run(_nodes(paths, MemoryNetwork(), rounds=4)))
    again = _nodes(paths, MemoryNetwork())
    asyncio.run(run(again))
    for node in again:
        assert isinstance(node.log.log_stream, io.StringIO)
        log = node.log.log_stream.getvalue().splitlines()
        start = json.loads(log[0])
        rounds = [json.loads(line)["round"] for line in log if '"event": "round"' in line]
        assert start["resumed"] and start["round"] == 4
        assert rounds[0] == 5 and rounds[-1] == 10


def _first_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as Murmur wrote it before its parts kept their own snapshots."""
    model, exchange = saved["model"], saved["exchange"]
    assert isinstance(model, dict)
    old = {k: v for k, v in saved.items() if k not in ("layout", "model", "exchange")}
    old.update({k: v for k, v in model.items() if k != "guard"})
    plain = isinstance(exchange, dict) and "keys" not in exchange
    old["secure"] = None if plain else exchange
    guard = model["guard"]
    old["step"] = None if guard is None else {"guard": guard, **(exchange if plain else {})}
    return old


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize("secure", ["off", "plain"])
def test_a_checkpoint_in_the_first_layout_resumes_the_same(
    wisconsin16: FederatedData, tmp_path: Path, secure: str
) -> None:
    """A site upgraded mid-run resumes from the checkpoint its older version wrote."""
    from node.state import checkpoint

    data = subset(wisconsin16, 3)
    compressor = "block-k:0.3:64" if secure != "off" else "top-k:0.1"
    spec = ConsortiumSpec(rounds=10, train=TRAIN, compressor=compressor, secure=secure)
    paths = write_consortium(tmp_path, data, spec)

    async def run(nodes: list[Node]) -> None:
        await asyncio.gather(*(n.run() for n in nodes))

    asyncio.run(run(_nodes(paths, MemoryNetwork(), rounds=4)))
    current = _nodes(paths, MemoryNetwork())
    for node in current:
        saved = checkpoint.load(node.ckpt_path)
        assert saved is not None and saved["layout"] == checkpoint.LAYOUT
        assert node.restore()
        checkpoint.save(node.ckpt_path, _first_layout(saved))
    upgraded = _nodes(paths, MemoryNetwork())
    for new, old in zip(current, upgraded, strict=True):
        assert old.restore()
        assert (old.round, old.phase, old.bytes_sent) == (new.round, new.phase, new.bytes_sent)
        for a, b in ((old.state.x, new.state.x), (old.state.s, new.state.s)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert old.learner.gamma == new.learner.gamma
        assert _same(old.exchange.snapshot(), new.exchange.snapshot())
        assert old.links.snapshot().keys() == new.links.snapshot().keys()
    again = _nodes(paths, MemoryNetwork())
    asyncio.run(run(again))
    assert all(n.round == 10 for n in again)


def test_bad_frames_are_counted_and_the_node_goes_on(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = subset(wisconsin16, 3)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=8, train=TRAIN))
    network = MemoryNetwork()
    nodes = _nodes(paths, network)
    victim = nodes[0]
    attacker_key = load_key(load_config(paths[1]).site.key)

    async def attack() -> None:
        await asyncio.sleep(0.05)
        rogue = MemoryTransport(network, attacker_key, "/memory/rogue")
        await rogue.start()
        rogue.set_peers({victim.identity.peer_id: victim.config.site.listen})
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
    rejected = victim.rejections()
    assert rejected["malformed"] >= 2 and rejected["forged"] >= 1
    (finish,) = events(victim, "finish")
    assert finish["rejected"] == rejected


@pytest.mark.slow
def test_eight_processes_over_libp2p_match_in_process(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    from node.gossip.registry import parse_compressor
    from sim.engine import Simulation
    from sim.results import RunSpec

    data = subset(wisconsin16, 8)
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


def _exact_sums(nodes: list[Node], topology: str) -> None:
    """Every s_i equals Σ_j W_ij x̂_j for the consortium's current W."""
    w = torch.from_numpy(build_topology(topology, len(nodes)).matrix(0)).float()
    expected = w @ torch.cat([n.state.xhat for n in nodes])
    for i, node in enumerate(nodes):
        torch.testing.assert_close(node.state.s[0], expected[i], atol=1e-5, rtol=1e-5)


async def _reload_at(node: Node, round: int, config: NodeConfig) -> None:
    while node.round < round:
        await asyncio.sleep(0.005)
    node.request_reload(config)


def test_removing_a_site_by_reload_reweights_and_stays_exact(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = subset(wisconsin16, 5)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=30, train=TRAIN))
    nodes = _nodes(paths, MemoryNetwork())
    members = nodes[0].config.consortium.members
    staying = members[:4]

    def without_last(node: Node) -> NodeConfig:
        peers = {p: a for p, a in node.config.consortium.peers.items() if p in staying}
        return node.config.edit(consortium={"members": staying, "peers": peers})

    async def run() -> None:
        # Sites reload a few rounds apart, as real hospitals would.
        reloads = [_reload_at(n, 8 + i % 3, without_last(n)) for i, n in enumerate(nodes)]
        await asyncio.gather(*reloads, *(n.run() for n in nodes))

    asyncio.run(run())
    removed = nodes[4]
    assert removed.round < 30
    assert isinstance(removed.log.log_stream, io.StringIO)
    assert '"event": "removed"' in removed.log.log_stream.getvalue()
    assert nodes[0].links.neighbours == [members[1], members[3]]
    assert all(n.round == 30 for n in nodes[:4])
    _exact_sums(nodes[:4], "ring")
    assert all(float(n.learner.accuracy() or 0) > 0.85 for n in nodes[:4])


def test_rewiring_by_reload_resynchronises_changed_links(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = subset(wisconsin16, 4)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=20, train=TRAIN))
    nodes = _nodes(paths, MemoryNetwork())
    everyone = {
        m: n.config.site.listen
        for m, n in zip(nodes[0].config.consortium.members, nodes, strict=True)
    }

    def complete(node: Node) -> NodeConfig:
        peers = {p: a for p, a in everyone.items() if p != node.identity.peer_id}
        return node.config.edit(consortium={"topology": "complete", "peers": peers})

    async def run() -> None:
        reloads = [_reload_at(n, 5 + i % 2, complete(n)) for i, n in enumerate(nodes)]
        await asyncio.gather(*reloads, *(n.run() for n in nodes))

    asyncio.run(run())
    assert all(len(n.links.neighbours) == 3 for n in nodes)
    _exact_sums(nodes, "complete")


def test_membership_change_while_down_is_applied_on_restart(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = subset(wisconsin16, 4)
    paths = write_consortium(tmp_path, data, ConsortiumSpec(rounds=12, train=TRAIN))

    async def run(nodes: list[Node]) -> None:
        await asyncio.gather(*(n.run() for n in nodes))

    first = _nodes(paths, MemoryNetwork(), rounds=5)
    asyncio.run(run(first))
    everyone = {n.identity.peer_id: n.config.site.listen for n in first}

    def complete(config: NodeConfig) -> NodeConfig:  # the edited site.toml
        me = config.consortium.members[
            first.index(next(n for n in first if n.config.path == config.path))
        ]
        peers = {p: a for p, a in everyone.items() if p != me}
        return config.edit(consortium={"topology": "complete", "peers": peers})

    again = _nodes(paths, MemoryNetwork(), edit=complete)
    asyncio.run(run(again))
    assert all(n.round == 12 and len(n.links.neighbours) == 3 for n in again)
    _exact_sums(again, "complete")


def test_builtin_data_gives_each_member_its_own_shard(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    from sim.builtin import materialize

    paths = write_consortium(tmp_path, subset(wisconsin16, 3), ConsortiumSpec(rounds=15))

    def builtin(config: NodeConfig) -> NodeConfig:
        edited = config.edit(
            data={"source": "builtin:breast-cancer", "eval_source": None, "split": "iid"}
        )
        return materialize(
            edited, config.consortium.members.index(load_key(config.site.key).peer_id)
        )

    nodes = _nodes(paths, MemoryNetwork(), edit=builtin)

    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(n.run() for n in nodes)))

    results = asyncio.run(run())
    shards = [np.load(str(n.config.data.source)[4:])["x"] for n in nodes]
    rows = {row.tobytes() for shard in shards for row in shard}
    assert len(rows) == sum(len(s) for s in shards)  # disjoint shards
    assert all(float(r["accuracy"]) > 0.85 for r in results)  # type: ignore[arg-type]
    lung = load_config(paths[0]).edit(data={"source": "builtin:ncctg-lung", "split": "natural"})
    with pytest.raises(ConfigError, match="members"):
        materialize(lung, 0)

"""Node events reach a real MQTT broker (mosquitto on loopback); a dead broker costs nothing."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from crypto.identity import load_key
from node.config import load_config, parse_broker
from node.errors import ConfigError
from node.memory_transport import MemoryNetwork, MemoryTransport
from node.runtime import Node
from node.trainer import TrainConfig
from sim.consortium import ConsortiumSpec, free_ports, write_consortium
from sim.prep import FederatedData

ROUNDS = 6


def _ring(tmp_path: Path, data: FederatedData, url: str) -> list[Node]:
    small = FederatedData(data.train[:3], data.test[:3], data.node_names[:3], data.n_features, 2)
    paths = write_consortium(tmp_path, small, ConsortiumSpec(rounds=ROUNDS, train=TrainConfig()))
    network = MemoryNetwork()
    nodes = []
    for path in paths:
        config = replace(load_config(path), telemetry_url=url, telemetry_prefix="test")
        transport = MemoryTransport(network, load_key(config.key), config.listen)
        nodes.append(Node(config, transport, log=io.StringIO(), status=io.StringIO()))
    return nodes


def test_events_and_retained_status_reach_the_broker(
    mosquitto: str, wisconsin16: FederatedData, tmp_path: Path
) -> None:
    nodes = _ring(tmp_path, wisconsin16, mosquitto)
    host, port, _ = parse_broker(mosquitto)
    received: list[tuple[str, dict[str, Any]]] = []

    async def listen(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("test/+/events", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append((str(message.topic), json.loads(message.payload)))
                if sum(1 for _, e in received if e["event"] == "finish") == len(nodes):
                    return

    async def late_dashboard() -> dict[str, int]:
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("test/+/status")
            status = {}
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    status[str(message.topic)] = json.loads(message.payload)["round"]
                    if len(status) == len(nodes):
                        return status
        return status

    async def run() -> dict[str, int]:
        ready = asyncio.Event()
        listener = asyncio.create_task(listen(ready))
        await ready.wait()
        await asyncio.gather(*(n.run() for n in nodes))
        await asyncio.wait_for(listener, 10)
        return await late_dashboard()

    status = asyncio.run(run())
    for node in nodes:
        mine = [e for topic, e in received if node.identity.peer_id in topic]
        assert [e["round"] for e in mine if e["event"] == "round"] == list(range(1, ROUNDS + 1))
        assert mine[0]["event"] == "start"
        assert node.telemetry is not None and node.telemetry.dropped == 0
    assert sorted(status.values()) == [ROUNDS] * len(nodes)


def test_an_unreachable_broker_never_holds_up_the_node(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    nothing_there = f"mqtt://127.0.0.1:{free_ports(1)[0]}"
    nodes = _ring(tmp_path, wisconsin16, nothing_there)

    async def run() -> None:
        await asyncio.wait_for(asyncio.gather(*(n.run() for n in nodes)), 60)

    asyncio.run(run())
    for node in nodes:
        assert node.round == ROUNDS
        assert node.telemetry is not None and node.telemetry.published == 0
        assert isinstance(node.log_stream, io.StringIO)
        last = json.loads(node.log_stream.getvalue().splitlines()[-1])
        assert last["event"] == "telemetry_dropped" and last["dropped"] >= ROUNDS


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "mqtt://host:99999"])
def test_bad_broker_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"\[telemetry\] mqtt"):
        parse_broker(url)

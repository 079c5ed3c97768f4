"""Node events reach a real MQTT broker (mosquitto on loopback); a dead broker costs nothing."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from crypto.identity import load_key
from crypto.keyfile import write_secret
from node.config import load_config, parse_broker
from node.errors import ConfigError
from node.runtime import Node
from node.site_log import broker_password
from node.telemetry import MqttTelemetry
from node.training.trainer import TrainConfig
from node.transport.memory import MemoryNetwork, MemoryTransport
from sim.consortium import ConsortiumSpec, free_ports, write_consortium
from sim.prep import FederatedData
from tests.conftest import SecureBroker

ROUNDS = 6


ROUNDS = 6


def _ring(tmp_path: Path, data: FederatedData, url: str) -> list[Node]:
    small = FederatedData(data.train[:3], data.test[:3], data.node_names[:3], data.n_features, 2)
    paths = write_consortium(tmp_path, small, ConsortiumSpec(rounds=ROUNDS, train=TrainConfig()))
    network = MemoryNetwork()
    nodes = []
    for path in paths:
        config = load_config(path).edit(telemetry={"mqtt": url, "topic": "test"})
        transport = MemoryTransport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, transport, log=io.StringIO(), status=io.StringIO()))
    return nodes


def test_events_and_retained_status_reach_the_broker(
    mosquitto: str, wisconsin16: FederatedData, tmp_path: Path
) -> None:
    nodes = _ring(tmp_path, wisconsin16, mosquitto)
    host, port, _ = parse_broker(mosquitto)
    received: list[tuple[str, dict[str, Any]]] = []
    messages: list[str] = []

    async def listen(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("test/+/events", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                batch = json.loads(message.payload)
                assert isinstance(batch, list) and batch
                messages.append(str(message.topic))
                received.extend((str(message.topic), event) for event in batch)
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
        # Batched: a message carries every event of its half second, not one each.
        assert messages.count(f"test/{node.identity.peer_id}/events") < len(mine) / 2
        assert node.log.telemetry is not None and node.log.telemetry.dropped == 0
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
        assert node.log.telemetry is not None and node.log.telemetry.published == 0
        assert isinstance(node.log.log_stream, io.StringIO)
        last = json.loads(node.log.log_stream.getvalue().splitlines()[-1])
        assert last["event"] == "telemetry_dropped" and last["dropped"] >= ROUNDS


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "mqtt://host:99999"])
def test_bad_broker_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"\[telemetry\] mqtt"):
        parse_broker(url)


def _secured(
    tmp_path: Path, data: FederatedData, url: str, password: str | None, ca: Path | None
) -> list[Node]:
    nodes = _ring(tmp_path, data, url)
    secret = tmp_path / "broker.password"
    if password is not None:
        write_secret(secret, password.encode(), overwrite=True, what="password")
    for node in nodes:
        node.config = node.config.edit(
            telemetry={
                "username": "site",
                "password_file": secret if password is not None else None,
                "ca_file": ca,
            }
        )
        node.log.telemetry = MqttTelemetry(
            url,
            node.identity.peer_id,
            "test",
            "site",
            broker_password(node.config),
            ca,
        )
    return nodes


@pytest.mark.parametrize(
    ("scheme", "right_password", "with_ca", "published"),
    [
        ("plain", True, False, True),
        ("plain", False, False, False),
        ("plain", None, False, False),  # username only
        ("tls", True, True, True),
        pytest.param(
            "tls",
            True,
            False,
            False,  # the broker's CA is not in the system trust store
            # paho-mqtt leaves the socket of a failed TLS handshake to the garbage collector
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_broker_authentication_and_ca_pinned_tls(
    secure_broker: SecureBroker,
    wisconsin16: FederatedData,
    tmp_path: Path,
    scheme: str,
    right_password: bool | None,
    with_ca: bool,
    published: bool,
) -> None:
    """A broker that wants a password (from a 0600 file) and, over mqtts, a certificate
    from the consortium's own CA; a wrong password or an unknown CA publishes nothing and
    the node goes on."""
    url = secure_broker.plain_url if scheme == "plain" else secure_broker.tls_url
    password = (
        None if right_password is None else (secure_broker.password if right_password else "wrong")
    )
    ca = secure_broker.ca_file if with_ca else None
    nodes = _secured(tmp_path, wisconsin16, url, password, ca)

    async def run() -> None:
        await asyncio.wait_for(asyncio.gather(*(n.run() for n in nodes)), 60)

    asyncio.run(run())
    for node in nodes:
        assert node.round == ROUNDS and node.log.telemetry is not None
        assert (node.log.telemetry.published >= ROUNDS) == published
        if not published:
            assert node.log.telemetry.published == 0 and node.log.telemetry.last_error


def test_a_readable_broker_password_file_is_refused(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("pw")
    secret.chmod(0o644)
    config = _ring(tmp_path, wisconsin16, "mqtt://127.0.0.1:1883")[0].config.edit(
        telemetry={"username": "site", "password_file": secret}
    )
    with pytest.raises(ConfigError, match=r"password_file.*group/others can read"):
        broker_password(config)

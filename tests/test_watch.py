"""The consortium broker's logins and ACLs, against a real mosquitto, and ``murmur watch``
reading real nodes' status topics and metrics endpoints."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from crypto.identity import load_key
from crypto.keyfile import read_secret
from node import broker as consortium_broker
from node import provision
from node.cli import main
from node.config import load_config
from node.errors import ConfigError
from node.watch import Board, run_endpoints
from sim import own_loops
from sim.consortium import ConsortiumSpec, free_ports, write_consortium
from sim.prep import FederatedData
from tests.conftest import broker

ROUNDS = 5


@dataclass(frozen=True)
class Consortium:
    url: str
    port: int
    folder: Path  # out/<name>/mqtt.password, out/broker/…
    sites: list[tuple[str, str]]  # (name, peer ID)
    configs: list[Path]

    def password(self, name: str) -> str:
        path = self.folder / (
            "broker/watch.password" if name == "watch" else f"{name}/mqtt.password"
        )
        return read_secret(path).decode().strip()


@pytest.fixture(scope="module")
def consortium(
    tmp_path_factory: pytest.TempPathFactory, wisconsin16: FederatedData
) -> Iterator[Consortium]:
    """Three nodes' configs, and the broker `murmur consortium` would write for them."""
    out = tmp_path_factory.mktemp("consortium")
    configs = write_consortium(out / "nodes", wisconsin16.first(3), ConsortiumSpec(rounds=ROUNDS))
    sites = [(f"site{i}", load_key(load_config(p).site.key).peer_id) for i, p in enumerate(configs)]
    port = free_ports(1)[0]
    url = f"mqtt://127.0.0.1:{port}"
    written = consortium_broker.write(out, sites, url)
    assert len(written) == 4  # the watch login and one per site
    conf = out / "broker" / "mosquitto.conf"
    # Run as us (mosquitto started as root would drop to a user that cannot read tmp).
    conf.write_text(conf.read_text() + f"user {getpass.getuser()}\n")
    with broker(conf, [port], cwd=out / "broker"):
        yield Consortium(url, port, out, sites, configs)


async def _collect(c: Consortium, seconds: float) -> dict[str, bytes]:
    """Everything the watch login receives in ``seconds`` (retained messages included)."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(
        "127.0.0.1", c.port, username="watch", password=c.password("watch")
    ) as client:
        await client.subscribe("murmur/#")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    got[str(message.topic)] = message.payload
    return got


def test_each_site_writes_only_under_its_own_peer_id(consortium: Consortium) -> None:
    (a, a_id), (_b, b_id), _ = consortium.sites

    async def scenario() -> dict[str, bytes]:
        async with aiomqtt.Client(
            "127.0.0.1", consortium.port, username=a, password=consortium.password(a)
        ) as client:
            await client.publish(f"murmur/{a_id}/status", b'{"round": 1}', qos=1, retain=True)
            # A forged status for a neighbour: the broker must drop it.
            await client.publish(f"murmur/{b_id}/status", b'{"round": 99}', qos=1, retain=True)
        async with aiomqtt.Client(
            "127.0.0.1", consortium.port, username="watch", password=consortium.password("watch")
        ) as client:
            await client.publish(f"murmur/{a_id}/status", b'{"round": 77}', qos=1, retain=True)
        return await _collect(consortium, 1.0)

    got = asyncio.run(scenario())
    assert got[f"murmur/{a_id}/status"] == b'{"round": 1}'  # neither forgery landed
    assert f"murmur/{b_id}/status" not in got

    async def login(username: str | None, password: str | None) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", consortium.port, username=username, password=password
        ):
            pass

    for username, password in [(None, None), (a, "wrong"), ("watch", consortium.password(a))]:
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user"):
            asyncio.run(login(username, password))
    # Clear the retained test status so the next test sees only the nodes' own.
    asyncio.run(_clear(consortium, a, a_id))


async def _clear(c: Consortium, name: str, peer_id: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", c.port, username=name, password=c.password(name)
    ) as client:
        await client.publish(f"murmur/{peer_id}/status", b"", qos=1, retain=True)


def test_watch_shows_every_site_from_the_broker_and_from_metrics(
    consortium: Consortium, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, (name, _) in zip(consortium.configs, consortium.sites, strict=True):
        # What `murmur consortium init --mqtt` writes into each site.toml, with the
        # password file at its absolute place here.
        telemetry = consortium_broker.site_telemetry(consortium.url, name)
        config = load_config(path).edit(
            telemetry={
                "mqtt": telemetry.mqtt,
                "username": telemetry.username,
                "password_file": str(consortium.folder / name / "mqtt.password"),
            }
        )
        path.write_text(config.to_toml())
    nodes = own_loops.memory_nodes(consortium.configs)
    asyncio.run(own_loops.run_nodes(nodes))

    code = main(
        [
            "watch",
            "--mqtt",
            consortium.url,
            "--password-file",
            str(consortium.folder / "broker" / "watch.password"),
            "--for",
            "1.5",
        ]
    )
    table = capsys.readouterr().out
    assert code == 0
    for node in nodes:
        line = next(row for row in table.splitlines() if node.identity.peer_id[-10:] in row)
        assert f" {ROUNDS} " in line, line
        assert "2/2" in line  # both neighbours heard
        assert f"{node.bytes_sent / 1e6:.2f} MB" in line


def test_provisioning_keeps_the_broker_in_step_with_the_members(tmp_path: Path) -> None:
    out = tmp_path / "c"
    url = "mqtt://broker.example.org:1883"
    manifest = provision.init(out, ["a", "b", "c"], mqtt=url, seed=1)
    a = load_config(out / "a" / "site.toml").telemetry
    assert (a.mqtt, a.username, a.password_file) == (url, "a", out / "a" / "mqtt.password")
    assert (out / "a" / "mqtt.password").stat().st_mode & 0o777 == 0o600
    assert (out / "broker" / "passwords").stat().st_mode & 0o777 == 0o600
    acl = (out / "broker" / "acl").read_text()
    for site in manifest.sites:
        assert f"user {site.name}\ntopic write murmur/{site.peer_id}/#" in acl
    before = (out / "a" / "mqtt.password").read_bytes()
    provision.add_site(out, "d")
    provision.remove_site(out, "b")
    users = [line.split(":")[0] for line in (out / "broker" / "passwords").read_text().split()]
    assert users == ["watch", "a", "c", "d"]
    assert (out / "a" / "mqtt.password").read_bytes() == before  # kept, not redrawn
    assert "user b\n" not in (out / "broker" / "acl").read_text()
    assert load_config(out / "d" / "site.toml").telemetry.username == "d"
    assert "listener 1883" in (out / "broker" / "mosquitto.conf").read_text()


def test_board_from_metrics_pages() -> None:
    from node.metrics import SiteMetrics

    metrics = SiteMetrics("12D3KooWsiteA", 2)
    metrics.planned(10)
    metrics.observe(
        {
            "event": "round",
            "round": 4,
            "peers": 1,
            "missed": 1,
            "bytes_sent": 2_000_000,
            "rejected": {"bad_signature": 3},
            "eps_spent": 1.25,
            "latency_s": 0.1,
            "t": 100.0,
        }
    )
    page = b"".join(metrics.app({"PATH_INFO": "/metrics"}, lambda s, h: None)).decode()
    board = Board()
    board.scrape(page)
    row = board.rows["12D3KooWsiteA"]
    assert (row.node, row.round, row.rounds, row.peers, row.neighbours) == (2, 4, 10, 1, 2)
    assert (row.rejected, row.eps, row.sent, row.seen) == (3, 1.25, 2_000_000, 100.0)
    with pytest.raises(ValueError, match="not a murmur node"):
        board.scrape("# HELP x y\n# TYPE x gauge\nx 1\n")
    assert json.dumps(board.rows["12D3KooWsiteA"].__dict__)


def test_watch_finds_a_process_runs_endpoints(tmp_path: Path, wisconsin16: FederatedData) -> None:
    configs = write_consortium(
        tmp_path / "nodes", wisconsin16.first(3), ConsortiumSpec(metrics=True)
    )
    urls = run_endpoints(tmp_path)
    assert urls == [f"http://{load_config(p).telemetry.metrics}/metrics" for p in configs]
    assert len(set(urls)) == 3
    write_consortium(tmp_path / "quiet" / "nodes", wisconsin16.first(2), ConsortiumSpec())
    with pytest.raises(ConfigError, match="no node there serves metrics"):
        run_endpoints(tmp_path / "quiet")

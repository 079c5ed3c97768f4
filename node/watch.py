"""``murmur watch``: a live terminal view of a whole consortium, one row per site.

It reads what the nodes already publish, so it adds nothing to any round: the retained
MQTT status topics (``<prefix>/<peer_id>/status``, the latest ``round`` event of each
site; :mod:`node.telemetry`) through the broker's read-only ``watch`` login
(:mod:`node.broker`), or each node's Prometheus endpoint (:mod:`node.metrics`), polled.
A site that stops reporting keeps its row, and its "last seen" grows: that is what an
operator watches for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from node.config import METRICS_OFF, load_config, parse_broker
from node.errors import ConfigError


@dataclass
class SiteRow:
    """What the view knows of one site."""

    site: str  # its peer ID
    node: int | None = None
    round: int = 0
    rounds: int | None = None
    eps: float | None = None
    sent: float = 0.0
    received: float = 0.0
    peers: int | None = None
    neighbours: int | None = None
    rejected: int = 0
    seen: float | None = None  # Unix time of its last report


@dataclass
class Board:
    """Every site's row, fed from status records or metric scrapes."""

    rows: dict[str, SiteRow] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # source → its last failure

    def row(self, site: str) -> SiteRow:
        return self.rows.setdefault(site, SiteRow(site))

    def status(self, site: str, record: dict[str, Any]) -> None:
        """A ``round`` event from the site's MQTT status topic."""
        row = self.row(site)
        row.node = _int(record.get("node"), row.node)
        row.round = int(record.get("round", row.round))
        row.eps = float(record["eps_spent"]) if record.get("eps_spent") else row.eps
        row.sent = float(record.get("bytes_sent", row.sent))
        row.received = float(record.get("bytes_received", row.received))
        row.peers = _int(record.get("peers"), row.peers)
        missed = _int(record.get("missed"), 0) or 0
        row.neighbours = None if row.peers is None else row.peers + missed
        row.rejected = sum(int(v) for v in dict(record.get("rejected") or {}).values())
        row.seen = float(record.get("t", time.time()))

    def scrape(self, text: str) -> None:
        """One node's ``/metrics`` page."""
        values: dict[str, float] = {}
        labels: dict[str, str] = {}
        rejected = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "murmur_frames_rejected_total":
                    rejected += sample.value
                elif sample.name == "murmur_site_info":
                    labels = dict(sample.labels)
                else:
                    values[sample.name] = sample.value
        if "peer_id" not in labels:
            raise ValueError("not a murmur node's metrics (no murmur_site_info)")
        row = self.row(labels["peer_id"])
        row.node = _int(labels.get("node"), row.node)
        row.round = int(values.get("murmur_round", row.round))
        row.rounds = _int(values.get("murmur_rounds_planned"), row.rounds)
        row.eps = values.get("murmur_epsilon_spent") or row.eps
        row.sent = values.get("murmur_sent_bytes_total", row.sent)
        row.received = values.get("murmur_received_bytes_total", row.received)
        row.peers = _int(values.get("murmur_peers_heard"), row.peers)
        row.neighbours = _int(values.get("murmur_neighbours"), row.neighbours)
        row.rejected = int(rejected)
        row.seen = values.get("murmur_last_round_timestamp_seconds") or row.seen

    def table(self, now: float | None = None) -> Table:
        now = time.time() if now is None else now
        table = Table(title=f"murmur consortium — {len(self.rows)} sites")
        for name in ("node", "site", "round", "ε", "sent", "received", "peers", "seen", "rej."):
            table.add_column(name, justify="left" if name == "site" else "right")
        for row in sorted(self.rows.values(), key=lambda r: (r.node is None, r.node, r.site)):
            table.add_row(
                "-" if row.node is None else str(row.node),
                f"…{row.site[-10:]}",
                f"{row.round}" + ("" if row.rounds is None else f"/{row.rounds}"),
                "-" if row.eps is None else f"{row.eps:.2f}",
                f"{row.sent / 1e6:.2f} MB",
                f"{row.received / 1e6:.2f} MB",
                "-" if row.peers is None else f"{row.peers}/{row.neighbours}",
                "-" if row.seen is None else f"{max(0.0, now - row.seen):.0f} s ago",
                str(row.rejected),
            )
        for source, error in sorted(self.errors.items()):
            table.caption = f"{source}: {error}"
        return table


def _int(value: Any, default: int | None) -> int | None:
    return default if value is None else int(value)


async def follow_mqtt(
    board: Board,
    url: str,
    prefix: str,
    username: str | None,
    password: str | None,
    ca_file: Path | None,
) -> None:
    """Keep ``board`` up to date from the broker's status topics until cancelled."""
    from node.telemetry import follow_status  # aiomqtt loads only for an MQTT watch

    def on_status(site: str, payload: bytes) -> None:
        try:
            board.status(site, json.loads(payload))
        except (ValueError, TypeError, KeyError) as exc:
            board.errors[url] = f"a bad status from {site}: {exc}"

    def on_error(error: str | None) -> None:
        if error is None:
            board.errors.pop(url, None)
        else:
            board.errors[url] = error

    await follow_status(url, prefix, on_status, on_error, username, password, ca_file)


async def poll_metrics(board: Board, urls: Sequence[str], interval_s: float) -> None:
    """Scrape every endpoint each ``interval_s`` until cancelled (a dead one is noted)."""

    def fetch(url: str) -> str:
        with urllib.request.urlopen(url, timeout=min(5.0, interval_s * 2)) as reply:
            return str(reply.read().decode())

    while True:
        for url in urls:
            try:
                board.scrape(await asyncio.to_thread(fetch, url))
                board.errors.pop(url, None)
            except (OSError, ValueError) as exc:
                board.errors[url] = str(getattr(exc, "reason", exc))
        await asyncio.sleep(interval_s)


def run_endpoints(run_dir: Path) -> list[str]:
    """The metrics URLs of a ``murmur sim --backend process`` run's nodes."""
    urls = []
    for path in sorted((run_dir / "nodes").glob("node-*/site.toml")):
        address = load_config(path).telemetry.metrics
        if address != METRICS_OFF:
            urls.append(f"http://{address}/metrics")
    if not urls:
        raise ConfigError(f"{run_dir}: no node there serves metrics (nodes/node-*/site.toml)")
    return urls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mqtt", help="the consortium broker, mqtt://HOST[:PORT] or mqtts://")
    source.add_argument("--metrics", help="comma list of node metrics URLs (…/metrics)")
    source.add_argument("--run", type=Path, help="a process-backend `murmur sim` output folder")
    parser.add_argument("--topic", default="murmur", help="MQTT topic prefix")
    parser.add_argument("--username", default="watch", help="MQTT login (default watch)")
    parser.add_argument("--password-file", type=Path, help="its password (a 0600 file)")
    parser.add_argument("--ca-file", type=Path, help="mqtts: the broker's CA")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument(
        "--for", dest="duration", type=float, help="watch this many seconds, print, exit"
    )


def run(args: argparse.Namespace) -> int:
    board = Board()
    if args.mqtt:
        from crypto.errors import KeyFileError
        from crypto.keyfile import read_secret

        try:
            password = (
                None
                if args.password_file is None
                else read_secret(args.password_file).decode().strip()
            )
        except KeyFileError as exc:
            raise ConfigError(f"--password-file: {exc}") from None
        parse_broker(args.mqtt)
        source = follow_mqtt(board, args.mqtt, args.topic, args.username, password, args.ca_file)
    else:
        urls = (
            run_endpoints(args.run)
            if args.run
            else [u.strip() for u in args.metrics.split(",") if u.strip()]
        )
        source = poll_metrics(board, urls, args.interval)
    asyncio.run(_watch(board, source, args.duration))
    return 0


async def _watch(board: Board, source: Any, duration: float | None) -> None:
    task = asyncio.create_task(source)
    console = Console()
    try:
        if duration is not None:
            await asyncio.sleep(duration)
            console.print(board.table())
            return
        with Live(board.table(), console=console, refresh_per_second=2) as live:
            while not task.done():
                live.update(board.table())
                await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

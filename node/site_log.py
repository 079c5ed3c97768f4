"""What a site tells its operators: JSON events, the status line, MQTT, rejection counts.

Kept out of the round loop so that the loop reads as the protocol. Every event goes to
the log stream as one JSON line, into the Prometheus metrics the node serves
(:mod:`node.metrics`) and, when ``[telemetry]`` names a broker, to MQTT (aiomqtt loads
only then). Rejected input is counted in full and logged once per
(peer, reason) and round, so a member flooding bad frames cannot flood the log.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from crypto.errors import KeyFileError
from crypto.keyfile import read_secret
from node.config import METRICS_OFF, NodeConfig
from node.errors import ConfigError, FrameError
from node.metrics import MetricsServer, SiteMetrics

if TYPE_CHECKING:
    from node.telemetry import MqttTelemetry


@dataclass(frozen=True)
class RoundReport:
    """What a site says about one finished round (the ``round`` event and status line)."""

    round: int
    rounds: int
    loss: float | None  # None under DP: a statistic of private batches
    trained: bool
    accuracy: float | None
    latency_s: float
    neighbours: int
    missed: int
    bytes_sent: int
    bytes_received: int
    audit_s: float  # this life's time spent keeping the audit log (node.audit.log)
    eps_spent: float
    eps_text: str
    rejected: dict[str, int]


class SiteLog:
    """One site's event log and rejection counters."""

    def __init__(self, config: NodeConfig, index: int, me: str, log: TextIO, status: TextIO):
        self.index = index
        self.log_stream = log
        self.status_stream = status
        self.telemetry = telemetry(config, me)
        self.metrics = SiteMetrics(me, index)
        self.metrics.planned(config.train.rounds)
        self.metrics_address = config.telemetry.metrics
        self.metrics_server: MetricsServer | None = None
        self.rejected: Counter[str] = Counter()  # refused after admission
        self._logged: set[tuple[str | None, str]] = set()
        self._quiet: Counter[str] = Counter()  # counted, not logged, this round

    def emit(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 4), "event": event, "node": self.index, **fields}
        self.log_stream.write(json.dumps(record) + "\n")
        self.log_stream.flush()
        self.metrics.observe(record)
        if self.telemetry is not None:
            self.telemetry.publish(record)

    def status(self, line: str) -> None:
        """One human-readable line per round for whoever watches the site's terminal."""
        self.status_stream.write(line + "\n")
        self.status_stream.flush()

    def count_rejection(self, exc: FrameError, peer: str) -> None:
        """A refusal found after admission (e.g. a sum that fails to decrypt)."""
        self.rejected[exc.reason] += 1
        self.note_rejection(exc, peer)

    def note_rejection(self, exc: FrameError, peer: str | None) -> None:
        """Log a rejected frame, once per (peer, reason) and round."""
        key = (peer, exc.reason)
        if key in self._logged:
            self._quiet[exc.reason] += 1
            return
        self._logged.add(key)
        self.emit("rejected", reason=exc.reason, peer=peer, detail=str(exc)[:200])

    def round(self, r: RoundReport, peer_id: str) -> None:
        """The ``round`` event, what was counted but not logged, and the status line."""
        peers = r.neighbours - r.missed
        self.emit(
            "round",
            round=r.round,
            loss=r.loss,
            trained=r.trained,
            accuracy=r.accuracy,
            latency_s=round(r.latency_s, 4),
            peers=peers,
            missed=r.missed,
            bytes_sent=r.bytes_sent,
            bytes_received=r.bytes_received,
            audit_s=round(r.audit_s, 6),
            eps_spent=r.eps_spent,
            rejected=r.rejected,
        )
        self._logged.clear()
        if self._quiet:
            self.emit("rejected_unlogged", round=r.round, counts=dict(self._quiet))
            self._quiet.clear()
        loss = "  -   " if r.loss is None else f"{r.loss:.4f}"
        self.status(
            f"murmur {peer_id[-8:]}  round {r.round}/{r.rounds}  loss {loss}  "
            f"peers {peers}/{r.neighbours}  sent {r.bytes_sent / 1e6:.2f} MB  {r.eps_text}"
        )

    def start(self) -> None:
        """Serve the metrics and start publishing; neither failing stops the node."""
        if self.metrics_address != METRICS_OFF:
            try:
                self.metrics_server = MetricsServer(self.metrics, self.metrics_address)
            except OSError as exc:
                self.emit("metrics_failed", address=self.metrics_address, detail=str(exc))
            else:
                self.emit("metrics", url=self.metrics_server.url)
        if self.telemetry is not None:
            self.telemetry.start()

    def stop_serving(self) -> None:
        """Close the metrics server (the node is stopping, or has crashed)."""
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    async def aclose(self) -> None:
        self.stop_serving()
        if self.telemetry is None:
            return
        await self.telemetry.aclose()
        if self.telemetry.dropped:
            self.emit(
                "telemetry_dropped",
                dropped=self.telemetry.dropped,
                published=self.telemetry.published,
                detail=self.telemetry.last_error,
            )


def telemetry(config: NodeConfig, me: str) -> MqttTelemetry | None:
    """The MQTT publisher when ``[telemetry]`` names a broker (aiomqtt loads only then)."""
    if config.telemetry.mqtt is None:
        return None
    from node.telemetry import MqttTelemetry

    return MqttTelemetry(
        config.telemetry.mqtt,
        me,
        config.telemetry.topic,
        config.telemetry.username,
        broker_password(config),
        config.telemetry.ca_file,
    )


def broker_password(config: NodeConfig) -> str | None:
    """The MQTT password, from its 0600 file (never from the config itself)."""
    if config.telemetry.password_file is None:
        return None
    try:
        raw = read_secret(config.telemetry.password_file)
    except KeyFileError as exc:
        raise ConfigError(f"[telemetry] password_file: {exc}") from None
    return raw.decode().strip()

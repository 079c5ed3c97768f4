"""Prometheus metrics and a status page, served by each node on a loopback address.

Operators already scrape Prometheus, so a node speaks its text format at ``/metrics``
(prometheus-client) and shows a small HTML status page at ``/`` for whoever opens it in a
browser. Neither may sit in the learning path: the values are fed from the node's own
events (:meth:`SiteMetrics.observe`, called by :class:`node.site_log.SiteLog`), which
only sets numbers under prometheus-client's locks, and the HTTP server runs in its own
daemon threads, so a slow or hung scraper costs the round nothing. A port that cannot be
bound is an event (``metrics_failed``), never a node that does not start.

Only operational figures are exported (rounds, ε, bytes, peers, rejections, latencies,
the time the audit log costs):
never model values or data, and the training loss only for a site without DP (under DP
the loss is a statistic of private batches; :meth:`node.learner.Learner.public_loss`).
"""

from __future__ import annotations

import html
import socket
import threading
import time
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

from node.config import parse_metrics_address

ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class SiteMetrics:
    """One node's metrics registry (its own, so several nodes can share a process)."""

    def __init__(self, peer_id: str, index: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total, resident memory, open files: what an operator checks
        # first when a site is slow.
        ProcessCollector(registry=r)
        Info("murmur_site", "This site's peer ID and index", registry=r).info(
            {"peer_id": peer_id, "node": str(index)}
        )
        self.round = Gauge("murmur_round", "Last finished round", registry=r)
        self.rounds = Gauge("murmur_rounds_planned", "Rounds this run trains", registry=r)
        self.loss = Gauge(
            "murmur_training_loss", "Local training loss (never under DP)", registry=r
        )
        self.eps = Gauge("murmur_epsilon_spent", "Privacy budget spent (DP sites)", registry=r)
        self.sent = Counter("murmur_sent_bytes", "Bytes sent on the wire", registry=r)
        self.received = Counter("murmur_received_bytes", "Bytes of frames admitted", registry=r)
        self.rejected = Counter(
            "murmur_frames_rejected", "Inputs refused, by reason", ["reason"], registry=r
        )
        self.peers = Gauge("murmur_peers_heard", "Neighbours heard in the last round", registry=r)
        self.neighbours = Gauge("murmur_neighbours", "Neighbours in the graph", registry=r)
        self.latency = Histogram(
            "murmur_round_duration_seconds",
            "Wall time of a round",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.checkpoint_s = Histogram(
            "murmur_checkpoint_duration_seconds",
            "Wall time of a checkpoint write",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.last_round = Gauge(
            "murmur_last_round_timestamp_seconds", "Unix time the last round ended", registry=r
        )
        self.audit = Counter(
            "murmur_audit_seconds", "Wall time spent keeping the audit log", registry=r
        )
        self.events = Counter("murmur_events", "Events the node logged", ["event"], registry=r)
        self._totals: dict[str, float] = {}
        self.peer_id, self.index = peer_id, index
        self.status: dict[str, Any] = {"round": 0}  # replaced whole: read by server threads
        self.planned_rounds = 0

    def observe(self, record: dict[str, Any]) -> None:
        """Take one node event (node.site_log.SiteLog.emit) into the metrics."""
        event = str(record.get("event"))
        self.events.labels(event).inc()
        if event == "start":
            self.neighbours.set(float(record.get("neighbours", 0)))
            self.round.set(float(record.get("round", 0)))
        if event != "round":
            return
        self.round.set(float(record["round"]))
        if record.get("loss") is not None:
            self.loss.set(float(record["loss"]))
        if record.get("eps_spent"):
            self.eps.set(float(record["eps_spent"]))
        self._advance(self.sent, "sent", float(record.get("bytes_sent", 0)))
        self._advance(self.received, "received", float(record.get("bytes_received", 0)))
        self._advance(self.audit, "audit", float(record.get("audit_s", 0.0)))
        for reason, count in dict(record.get("rejected") or {}).items():
            self._advance(self.rejected.labels(reason), f"rejected:{reason}", float(count))
        self.peers.set(float(record.get("peers", 0)))
        self.neighbours.set(float(record.get("peers", 0)) + float(record.get("missed", 0)))
        self.latency.observe(float(record.get("latency_s", 0.0)))
        self.last_round.set(float(record.get("t", time.time())))
        self.status = {**record, "seen": time.time()}

    def planned(self, rounds: int) -> None:
        self.planned_rounds = rounds
        self.rounds.set(float(rounds))

    def checkpointed(self, seconds: float) -> None:
        self.checkpoint_s.observe(seconds)

    def _advance(self, counter: Any, key: str, total: float) -> None:
        """Counters only go up: add what a cumulative figure grew by (a restarted node's
        figures come back from its checkpoint, so they do not fall)."""
        grew = total - self._totals.get(key, 0.0)
        if grew > 0:
            counter.inc(grew)
            self._totals[key] = total

    # -- HTTP -------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The WSGI app: ``/metrics`` in Prometheus text format, ``/`` the status page."""
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body, kind = generate_latest(self.registry), CONTENT_TYPE_LATEST
        elif path == "/":
            body, kind = self.page().encode(), "text/html; charset=utf-8"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try / or /metrics\n"]
        start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    def page(self) -> str:
        """The status page: where this site stands, refreshed every 5 s."""
        s = self.status
        rows = [
            ("site", f"{self.peer_id} (node {self.index})"),
            ("round", f"{s.get('round', 0)} / {self.planned_rounds}"),
            ("peers heard", f"{s.get('peers', '-')} (missed {s.get('missed', '-')})"),
            ("ε spent", f"{s.get('eps_spent', 0.0):.3f}" if s.get("eps_spent") else "no DP"),
            ("bytes sent / received", f"{s.get('bytes_sent', 0)} / {s.get('bytes_received', 0)}"),
            ("last round", f"{s.get('latency_s', '-')} s"),
            ("rejected", ", ".join(f"{k}: {v}" for k, v in (s.get("rejected") or {}).items())),
            (
                "last seen",
                time.strftime("%H:%M:%S", time.localtime(s["seen"])) if "seen" in s else "-",
            ),
        ]
        cells = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v) or '-')}</td></tr>"
            for k, v in rows
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<meta http-equiv='refresh' content='5'><title>murmur node</title>"
            "<style>body{font-family:sans-serif}th{text-align:left;padding-right:1em}</style>"
            f"</head><body><h1>murmur node</h1><table>{cells}</table>"
            "<p><a href='/metrics'>metrics</a></p></body></html>"
        )


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper never keeps the node from exiting


class _IPv6Server(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not the node's events; stderr stays for what matters."""


class MetricsServer:
    """The HTTP server of :class:`SiteMetrics`, in daemon threads off the event loop."""

    def __init__(self, metrics: SiteMetrics, address: str) -> None:
        host, port = parse_metrics_address(address)
        server_class = _IPv6Server if ":" in host else _ThreadingServer
        self.server = make_server(
            host, port, metrics.app, server_class=server_class, handler_class=_QuietHandler
        )
        self.url = f"http://{address.rpartition(':')[0]}:{self.server.server_port}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="murmur-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

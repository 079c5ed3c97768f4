"""Each node serves Prometheus metrics and a status page, scraped here by a real HTTP client
while the nodes train; a port in use costs the node its metrics, never its run."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config import load_config
from node.errors import ConfigError
from node.metrics import SiteMetrics
from node.runtime import Node
from sim import own_loops
from sim.consortium import ConsortiumSpec, write_consortium
from sim.prep import FederatedData
from tests.node_kit import events

ROUNDS = 8


def _scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _nodes(tmp_path: Path, data: FederatedData) -> list[Node]:
    paths = write_consortium(tmp_path, data.first(3), ConsortiumSpec(rounds=ROUNDS, metrics=True))
    return own_loops.memory_nodes(paths)


def test_metrics_scraped_while_training_match_the_nodes_figures(
    tmp_path: Path, wisconsin16: FederatedData
) -> None:
    nodes = _nodes(tmp_path, wisconsin16)
    urls = [f"http://{n.config.telemetry.metrics}/" for n in nodes]
    seen: list[list[dict[str, float]]] = [[] for _ in nodes]
    pages: list[str] = []
    stop = threading.Event()

    def scraper() -> None:
        # A real client on its own thread, as Prometheus would be, while the nodes train.
        while not stop.is_set():
            for i, url in enumerate(urls):
                try:
                    seen[i].append(_scrape(url + "metrics"))
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        pages.append(reply.read().decode())
                except (urllib.error.URLError, ConnectionError):
                    pass  # not serving yet, or already stopped
            time.sleep(0.005)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        asyncio.run(own_loops.run_nodes(nodes))
    finally:
        stop.set()
        thread.join()
    for node, scrapes in zip(nodes, seen, strict=True):
        rounds: dict[int, dict[str, Any]] = {int(str(e["round"])): e for e in events(node, "round")}
        during = [s for s in scrapes if 1 <= s["murmur_round"] < ROUNDS]
        assert during, f"no scrape of node {node.index} answered while it trained"
        for s in during:
            # Between two round events the metrics hold exactly the last one's figures.
            r = int(s["murmur_round"])
            assert s["murmur_sent_bytes_total"] == rounds[r]["bytes_sent"] > 0
            assert s["murmur_received_bytes_total"] == rounds[r]["bytes_received"] > 0
            assert s["murmur_round_duration_seconds_count"] == r
            assert s["murmur_checkpoint_duration_seconds_count"] >= 2 * r  # two a round
            assert s["murmur_peers_heard"] == rounds[r]["peers"] == 2 == s["murmur_neighbours"]
            assert s["murmur_training_loss"] == pytest.approx(rounds[r]["loss"])  # no DP
            assert s["murmur_rounds_planned"] == ROUNDS
            assert s["murmur_events_total{event=round}"] == r
            info = f"murmur_site_info{{node={node.index},peer_id={node.identity.peer_id}}}"
            assert s[info] == 1
        assert rounds[ROUNDS]["bytes_sent"] == node.bytes_sent
        assert events(node, "metrics")[0]["url"] == urls[node.index]
    assert any(re.search(rf"round</th><td>[1-9]\d* / {ROUNDS}<", page) for page in pages)
    assert all("<table>" in page and "/metrics" in page for page in pages)
    # Serving stops with the node.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(urls[0] + "metrics", timeout=2)


def test_rejections_and_dp_reach_the_metrics() -> None:
    metrics = SiteMetrics("12D3KooWexample", 4)
    round_event = {"event": "round", "round": 3, "peers": 1, "missed": 1, "latency_s": 0.2}
    metrics.observe({**round_event, "rejected": {"bad_signature": 2}, "bytes_sent": 100})
    twice = {"bad_signature": 5, "replay": 1}
    metrics.observe({**round_event, "rejected": twice, "eps_spent": 0.7})
    # A restarted node reports totals from its checkpoint: counters never go down.
    metrics.observe({**round_event, "rejected": {"bad_signature": 1}, "bytes_sent": 40})
    page = metrics.app({"PATH_INFO": "/metrics"}, lambda status, headers: None)
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(b"".join(page).decode())
        for s in f.samples
    }
    assert samples["murmur_frames_rejected_total[('reason', 'bad_signature')]"] == 5
    assert samples["murmur_frames_rejected_total[('reason', 'replay')]"] == 1
    assert samples["murmur_sent_bytes_total[]"] == 100
    assert samples["murmur_epsilon_spent[]"] == 0.7
    assert samples["murmur_neighbours[]"] == 2
    assert "murmur_training_loss[]" not in samples or samples["murmur_training_loss[]"] == 0
    not_found: list[str] = []
    metrics.app({"PATH_INFO": "/x"}, lambda status, headers: not_found.append(status))
    assert not_found == ["404 Not Found"]


def test_a_port_in_use_costs_the_metrics_not_the_run(
    tmp_path: Path, wisconsin16: FederatedData
) -> None:
    nodes = _nodes(tmp_path, wisconsin16)
    host, _, port = nodes[1].config.telemetry.metrics.rpartition(":")
    squatter = socket.socket()
    squatter.bind((host, int(port)))
    squatter.listen()
    try:
        results = asyncio.run(own_loops.run_nodes(nodes))
    finally:
        squatter.close()
    assert [r["round"] for r in results] == [ROUNDS] * 3
    failed = events(nodes[1], "metrics_failed")
    assert len(failed) == 1 and "in use" in str(failed[0]["detail"]).lower()
    assert events(nodes[0], "metrics_failed") == []


@pytest.mark.parametrize("bad", ["9464", "localhost", "host:99999", ":9464", "host:port"])
def test_a_bad_metrics_address_is_a_config_error(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nkey = "k"\n[consortium]\nseed = 0\nmembers = ["a"]\n'
        f'[data]\nsource = "builtin:breast-cancer"\n[telemetry]\nmetrics = "{bad}"\n'
    )
    with pytest.raises(ConfigError, match="metrics"):
        load_config(path)

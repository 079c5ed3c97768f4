"""``make bench`` (operations): do the metrics, the MQTT telemetry and ``murmur watch``
stay out of the learning path, and does the metrics endpoint answer while nodes train?

One consortium of real ``murmur node`` processes over libp2p on loopback (the
multi-process simulator: 4 sites, Wisconsin, ring, MLP, top-k 10%) runs in four modes:

- **quiet**: metrics off, no broker;
- **observed**: every node serves metrics and publishes to a real mosquitto; a scraper
  thread fetches every node's ``/metrics`` and ``/`` every second (Prometheus' default
  is 15 s) and ``murmur watch --mqtt`` follows the broker in its own process;
- **stress**: the same, scraped every 50 ms: 40 requests a second to each node;
- **broker down**: the nodes are told of a broker that is not running, and serve metrics
  with no one scraping.

The modes take turns, three times over (quiet, observed, stress, down, quiet, …), so that
a change in the machine's load falls on all of them alike. Reported for each mode: the
median round latency over its runs and its ratio to quiet, and the CPU a node spends a
round (from its start and finish events), which tells a node's own work apart from the
scraper, the watch and the broker taking the machine's two cores from it; and the scrape
latencies (median, p95, max) of the answers given while the nodes were training (between
the first and last round events). Writes ``benchmarks/results/operations.{json,md}``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from node.config import METRICS_OFF, load_config
from node.training.trainer import TrainConfig
from sim.consortium import ConsortiumSpec, free_ports
from sim.prep import dirichlet_sites
from sim.process import run_processes
from sim.run_timeline import cpu_s_per_round, read_timeline

RESULTS = Path(__file__).parent / "results"
SITES, ROUNDS = 4, 150


@contextlib.contextmanager
def _mosquitto(folder: Path) -> Iterator[str]:
    port = free_ports(1)[0]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class _Scraper:
    """Fetches every node's pages on a timer; keeps the time of each answer."""

    def __init__(self, nodes_dir: Path, every_s: float) -> None:
        self.nodes_dir, self.every_s = nodes_dir, every_s
        self.answers: list[tuple[float, float]] = []  # (unix time, seconds to answer)
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _urls(self) -> list[str]:
        urls = []
        for path in sorted(self.nodes_dir.glob("node-*/site.toml")):
            with contextlib.suppress(Exception):  # being written
                address = load_config(path).telemetry.metrics
                if address != METRICS_OFF:
                    urls += [f"http://{address}/metrics", f"http://{address}/"]
        return urls

    def _run(self) -> None:
        urls: list[str] = []
        while not self.stop.is_set():
            urls = urls if len(urls) == 2 * SITES else self._urls()
            for url in urls:
                began = time.perf_counter()
                try:
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        reply.read()
                    self.answers.append((time.time(), time.perf_counter() - began))
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    self.failures += 1  # not up yet, or already finished
            self.stop.wait(self.every_s)


def _run(out: Path, mode: str, broker: str | None) -> dict[str, Any]:
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0).first(SITES)
    train = TrainConfig(optimizer="sgd", lr=0.1, local_steps=4, batch_size=16)
    spec = ConsortiumSpec(
        rounds=ROUNDS,
        model="mlp:64",
        train=train,
        compressor="top-k:0.1",
        metrics=mode != "quiet",
        mqtt=None if mode == "quiet" else broker,
    )
    scraper = _Scraper(out / "nodes", SCRAPE_EVERY_S.get(mode, 0.0))
    watch = None
    if mode in SCRAPE_EVERY_S:
        scraper.thread.start()
        assert broker is not None
        watch = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "watch", "--mqtt", broker, "--for", "600"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    began = time.perf_counter()
    try:
        result = run_processes(out, data, spec, kills=[])
    finally:
        scraper.stop.set()
        if scraper.thread.is_alive():
            scraper.thread.join()
        if watch is not None:
            watch.terminate()
            watch.wait(10)
    events = read_timeline(out / "timeline.jsonl")
    rounds = [e for e in events if e.get("event") == "round"]
    first, last = min(float(e["t"]) for e in rounds), max(float(e["t"]) for e in rounds)
    training = [s for t, s in scraper.answers if first <= t <= last]
    return {
        "mode": mode,
        "wall_s": time.perf_counter() - began,
        "median_round_s": statistics.median(float(e["latency_s"]) for e in rounds),
        "round_latencies_s": [float(e["latency_s"]) for e in rounds],
        "cpu_s_per_round": cpu_s_per_round(events, ROUNDS),
        "scrape_samples_ms": [1000 * x for x in training],
        "accuracy_mean": result.accuracy_mean[-1],
        "scrapes": len(training),
        "scrape_failures": scraper.failures,
    }


MODES = ("quiet", "observed", "stress", "broker down")
# How often each watched mode scrapes every node's two pages.
SCRAPE_EVERY_S = {"observed": 1.0, "stress": 0.05}
REPEATS = 3


def main() -> None:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with _mosquitto(root) as broker:
            dead = f"mqtt://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
            for k in range(REPEATS):
                for i, mode in enumerate(MODES):
                    url = dead if mode == "broker down" else broker
                    runs.append(_run(root / f"{k}-{i}", mode, url))
                    runs[-1]["repeat"] = k
    modes = [_mode_figures(mode, [r for r in runs if r["mode"] == mode]) for mode in MODES]
    quiet = modes[0]
    for m in modes:
        m["round_ratio_to_quiet"] = m["median_round_s"] / quiet["median_round_s"]
        m["cpu_ratio_to_quiet"] = m["cpu_s_per_round"] / quiet["cpu_s_per_round"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "sites": SITES,
        "rounds": ROUNDS,
        "scrape_every_s": SCRAPE_EVERY_S,
        "modes": modes,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "operations.json").write_text(json.dumps(report, indent=2))
    lines = _table(report)
    (RESULTS / "operations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _mode_figures(mode: str, mine: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode over its runs: the median round, CPU a round, the scrapes' latencies."""
    scrapes = [ms for r in mine for ms in r.pop("scrape_samples_ms")]
    return {
        "mode": mode,
        "median_round_s": statistics.median(x for r in mine for x in r.pop("round_latencies_s")),
        "cpu_s_per_round": statistics.mean(r["cpu_s_per_round"] for r in mine),
        "accuracy_mean": [r["accuracy_mean"] for r in mine],
        "scrapes": len(scrapes),
        "scrape_ms": (
            {
                "median": float(np.median(scrapes)),
                "p95": float(np.percentile(scrapes, 95)),
                "max": max(scrapes),
            }
            if scrapes
            else None
        ),
    }


def _table(report: dict[str, Any]) -> list[str]:
    modes = report["modes"]
    watched = [m for m in modes if m["scrape_ms"]]
    return [
        "# Operations benchmarks: metrics, MQTT telemetry and `murmur watch`",
        "",
        f"Measured {report['date']}; {SITES} real node processes over libp2p on loopback "
        f"(2 cores), Wisconsin, ring, MLP 64, top-k 10%, {ROUNDS} rounds; the modes take "
        f"turns, {REPEATS} runs each (median round over its runs; CPU a node spends a round, "
        "mean; final accuracy of each run). Observed and stress: metrics scraped, status "
        "published to mosquitto, `murmur watch --mqtt` running.",
        "",
        "| run | scraped every | median round | vs quiet | node CPU a round | vs quiet "
        "| final accuracy |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {m['mode']} | "
            + (f"{SCRAPE_EVERY_S[m['mode']]:g} s" if m["mode"] in SCRAPE_EVERY_S else "—")
            + f" | {1000 * m['median_round_s']:.1f} ms | {m['round_ratio_to_quiet']:.3f}× | "
            f"{1000 * m['cpu_s_per_round']:.2f} ms | {m['cpu_ratio_to_quiet']:.3f}× | "
            + " / ".join(f"{100 * a:.1f}%" for a in m["accuracy_mean"])
            + " |"
            for m in modes
        ),
        "",
        "| scrapes answered while the nodes trained | answered | median | p95 | max "
        "(target < 50 ms) |",
        "|---|---|---|---|---|",
        *(
            f"| {m['mode']} (every {SCRAPE_EVERY_S[m['mode']]:g} s, / and /metrics) | "
            f"{m['scrapes']} | {m['scrape_ms']['median']:.2f} ms | "
            f"{m['scrape_ms']['p95']:.2f} ms | {m['scrape_ms']['max']:.2f} ms |"
            for m in watched
        ),
    ]


if __name__ == "__main__":
    main()

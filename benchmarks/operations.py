"""``make bench`` (operations): do the metrics, the MQTT telemetry and ``murmur watch``
stay out of the learning path, and does the metrics endpoint answer while nodes train?

One consortium of real ``murmur node`` processes over libp2p on loopback (the
multi-process simulator: 4 sites, Wisconsin, ring, MLP, top-k 10%) runs three times:

- **quiet**: metrics off, no broker;
- **observed**: every node serves metrics and publishes to a real mosquitto; a scraper
  thread fetches every node's ``/metrics`` and ``/`` every 50 ms and times each answer,
  and ``murmur watch --mqtt`` follows the broker in its own process;
- **broker down**: the nodes are told of a broker that is not running, and serve metrics
  with no one scraping.

The three runs take turns, twice over (quiet, observed, down, quiet, …), so that a change
in the machine's load falls on all of them alike. Reported: each mode's median round
latency over both of its runs and its ratio to quiet, and the scrape latencies (median,
p95, max) taken while the nodes were training. Writes ``benchmarks/results/operations.{json,md}``.
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

RESULTS = Path(__file__).parent / "results"
SITES, ROUNDS = 4, 40
SCRAPE_EVERY_S = 0.05


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

    def __init__(self, nodes_dir: Path) -> None:
        self.nodes_dir, self.latencies_s, self.failures = nodes_dir, list[float](), 0
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
                    self.latencies_s.append(time.perf_counter() - began)
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    self.failures += 1  # not up yet, or already finished
            time.sleep(SCRAPE_EVERY_S)


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
    scraper = _Scraper(out / "nodes")
    watch = None
    if mode == "observed":
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
    events = [
        json.loads(line)
        for line in (out / "timeline.jsonl").read_text().splitlines()
        if '"round"' in line
    ]
    latencies = [float(e["latency_s"]) for e in events if e.get("event") == "round"]
    return {
        "mode": mode,
        "wall_s": time.perf_counter() - began,
        "median_round_s": statistics.median(latencies),
        "round_latencies_s": latencies,
        "scrape_samples_ms": [1000 * x for x in scraper.latencies_s],
        "accuracy_mean": result.accuracy_mean[-1],
        "scrapes": len(scraper.latencies_s),
        "scrape_failures": scraper.failures,
    }


MODES = ("quiet", "observed", "broker down")
REPEATS = 2


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
    modes: list[dict[str, Any]] = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        scrapes = [ms for r in mine for ms in r.pop("scrape_samples_ms")]
        modes.append(
            {
                "mode": mode,
                "median_round_s": statistics.median(
                    [x for r in mine for x in r.pop("round_latencies_s")]
                ),
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
        )
    quiet = modes[0]["median_round_s"]
    for mode_figures in modes:
        mode_figures["round_ratio_to_quiet"] = mode_figures["median_round_s"] / quiet
    observed = modes[1]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "sites": SITES,
        "rounds": ROUNDS,
        "modes": modes,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "operations.json").write_text(json.dumps(report, indent=2))
    scrape = observed["scrape_ms"] or {"median": float("nan"), "p95": float("nan"), "max": 0.0}
    lines = [
        "# Operations benchmarks: metrics, MQTT telemetry and `murmur watch`",
        "",
        f"Measured {report['date']}; {SITES} real node processes over libp2p on loopback, "
        f"Wisconsin, ring, MLP 64, top-k 10%, {ROUNDS} rounds; each mode run {REPEATS}× in "
        "turn with the others (median round over both runs; accuracy of each run).",
        "",
        "| run | median round | vs quiet | final accuracy |",
        "|---|---|---|---|",
        *(
            f"| {m['mode']} | {1000 * m['median_round_s']:.1f} ms | "
            f"{m['round_ratio_to_quiet']:.3f}× | "
            + " / ".join(f"{100 * a:.1f}%" for a in m["accuracy_mean"])
            + " |"
            for m in modes
        ),
        "",
        "| scrapes while training (observed run) | value | target |",
        "|---|---|---|",
        f"| answered (every {1000 * SCRAPE_EVERY_S:.0f} ms, every node, / and /metrics) | "
        f"{observed['scrapes']} | — |",
        f"| median | {scrape['median']:.2f} ms | — |",
        f"| p95 | {scrape['p95']:.2f} ms | — |",
        f"| max | {scrape['max']:.2f} ms | < 50 ms |",
    ]
    (RESULTS / "operations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

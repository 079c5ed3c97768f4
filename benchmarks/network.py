"""``make bench`` (networked node): libp2p stream throughput vs plain asyncio TCP; 16 real
node processes on Wisconsin (median round latency, RSS per node); one node killed for
good at round 20 of 100 plus 10% message drop against the fault-free run. The fuzzing
of every peer input is its own bench (benchmarks/fuzz.py).

Writes ``benchmarks/results/network.{json,md}``. Both throughputs are measured in the
same run, one after the other, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import throughput
from node.training.trainer import TrainConfig
from sim.consortium import ConsortiumSpec
from sim.faults import parse_crash
from sim.prep import FederatedData, dirichlet_sites
from sim.process import run_processes

RESULTS = Path(__file__).parent / "results"


@functools.cache
def _wisconsin(nodes: int) -> FederatedData:
    """The same federated split for every run of the bench (built once)."""
    return dirichlet_sites("breast-cancer", nodes)


def processes(
    nodes: int, rounds: int, kills: tuple[str, ...] = (), drop: float = 0.0
) -> dict[str, Any]:
    data = _wisconsin(nodes)
    spec = ConsortiumSpec(
        rounds=rounds,
        train=TrainConfig(optimizer="sgd", lr=0.3, batch_size=16),
        eval_every=10,
        drop=drop,
    )
    out = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    try:
        result = run_processes(out, data, spec, [parse_crash(k) for k in kills])
        rss = []
        for path in sorted((out / "nodes").glob("node-*/node.jsonl")):
            events = [json.loads(line) for line in path.read_text().splitlines()]
            rss += [e["rss_bytes"] for e in events if e.get("event") == "finish"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "nodes": nodes,
        "rounds": rounds,
        "median_round_latency_s": result.final["round_latency_median_s"],
        "kills": list(kills),
        "drop": drop,
        "accuracy_mean": result.final["accuracy_mean"],
        "accuracy_min": result.final["accuracy_min"],
        "wall_s": result.final["wall_s"],
        "rss_per_node_bytes": float(np.median(rss)) if rss else None,
    }


def main() -> None:
    frames = 64
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d")}
    pairs = []
    for _ in range(5):  # alternating pairs; the median pair's ratio is the figure
        tcp = asyncio.run(throughput.tcp(frames))
        p2p = asyncio.run(throughput.libp2p(frames))
        pairs.append((p2p / tcp, tcp, p2p))
        print(f"throughput: tcp {tcp / 1e6:.0f} MB/s, libp2p {p2p / 1e6:.0f} MB/s", flush=True)
    ratio, tcp, p2p = sorted(pairs)[len(pairs) // 2]
    report["throughput"] = {
        "tcp_bytes_per_s": tcp,
        "libp2p_bytes_per_s": p2p,
        "ratio": ratio,
        "ratios_all": [r for r, _, _ in pairs],
    }
    report["processes"] = processes(16, 50)
    print(f"16 nodes x 50 rounds: {report['processes']}", flush=True)
    report["fault_free_100"] = processes(16, 100)
    print(f"fault-free 16 x 100: {report['fault_free_100']}", flush=True)
    report["kill_and_drop_100"] = processes(16, 100, kills=("3@20",), drop=0.1)
    print(f"kill 3@20 + drop 0.1: {report['kill_and_drop_100']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "network.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "network.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    t, p = report["throughput"], report["processes"]
    free, hurt = report["fault_free_100"], report["kill_and_drop_100"]
    gap = 100 * ((free["accuracy_mean"] or 0) - (hurt["accuracy_mean"] or 0))

    def pct(run: dict[str, Any]) -> str:
        return f"{100 * (run['accuracy_mean'] or 0):.1f}% / {100 * (run['accuracy_min'] or 0):.1f}%"

    return "\n".join(
        [
            "# Networked node benchmarks",
            "",
            f"Measured {report['date']}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| 1 MiB frames, plain asyncio TCP (receiver in its own process) | "
            f"{t['tcp_bytes_per_s'] / 1e6:.0f} MB/s |",
            f"| 1 MiB frames, libp2p (Noise + Yamux) | {t['libp2p_bytes_per_s'] / 1e6:.0f} MB/s |",
            f"| libp2p / TCP, median of 5 pairs | {100 * t['ratio']:.1f}% (target ≥ 50%; all: "
            + ", ".join(f"{100 * r:.0f}%" for r in t["ratios_all"])
            + ") |",
            f"| 16 processes × 50 rounds: median round latency | "
            f"{p['median_round_latency_s']:.3f} s (target ≤ 0.5 s) |",
            f"| 16 processes × 50: accuracy mean | {100 * (p['accuracy_mean'] or 0):.1f}% |",
            f"| 16 processes × 50: wall | {p['wall_s']:.1f} s |",
            f"| RSS per node (median) | {(p['rss_per_node_bytes'] or 0) / 2**20:.0f} MiB |",
            f"| 16 × 100 fault-free: accuracy mean / worst | {pct(free)} |",
            f"| 16 × 100, node 3 killed at 20 for good + 10% drop: survivors | {pct(hurt)} |",
            f"| fault-free − faulty (mean) | {gap:+.1f} points (target ≤ 2) |",
            "| fuzzing every peer input | see fuzz.md (`python -m benchmarks.fuzz`) |",
        ]
    )


if __name__ == "__main__":
    main()

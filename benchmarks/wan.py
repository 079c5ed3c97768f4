"""``python -m benchmarks.wan``: does gossip learning survive a real WAN, and at what cost
in round time?

Loopback has no latency, no bandwidth limit and no loss, so every other process
benchmark measures the protocol on a perfect network. Here the same consortium (8 real
``murmur node`` processes over libp2p; Wisconsin, Dirichlet α = 0.5 split of the shared
16-site partition, first 8 sites; ring; default model; top-k 10%; 50 rounds) runs twice:

- **loopback**: every node on 127.0.0.1 (:func:`sim.process.run_processes`);
- **WAN**: every node in its own network namespace (:func:`sim.wan_run.run_wan`), each
  link shaped as a hospital uplink: 40 ms ± 10 ms one way, 50 Mbit/s, 1% loss per packet.

For each: final accuracy (mean and worst site), median and p95 round latency (every
node's ``round`` events' ``latency_s`` in ``timeline.jsonl``) and wall time; the accuracy
gap loopback → WAN says whether the WAN costs learning (target: within 1 point) and the
latencies what it costs in time.

Then the deadline (``gossip.deadline_s``: how long a round waits for its neighbours'
parts, node.pacing): the WAN run again at shorter deadlines. A part that misses the
deadline is not lost: its items stay in the sender's backlog and go with a later frame
(node.state.backlog), so a short deadline trades round time against mixing with stale
(late) information. Reported per deadline: median round latency, mean accuracy and the
neighbour parts missed (the ``round`` events' ``missed``, summed over nodes and rounds).

Writes ``benchmarks/results/wan.{json,md}``; the md says how the links were shaped (netem
or nfqueue, :mod:`sim.wan_shaping`). Needs root and network namespaces.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sim.consortium import ConsortiumSpec
from sim.netns import WanProfile, shaping_backend, unavailable
from sim.prep import dirichlet_sites
from sim.process import run_processes
from sim.results import MethodResult
from sim.wan_run import run_wan

RESULTS = Path(__file__).parent / "results"
SITES, ROUNDS = 8, 50
PROFILE = "delay=40,jitter=10,rate=50,loss=1"
DEADLINES_S = (0.05, 0.2)  # besides the default, which the main WAN run uses


def _timeline(out: Path) -> dict[str, Any]:
    """Round latencies and missed parts over every node's ``round`` events."""
    rounds = [
        event
        for line in (out / "timeline.jsonl").read_text().splitlines()
        if (event := json.loads(line)).get("event") == "round"
    ]
    latencies = np.array([float(e["latency_s"]) for e in rounds])
    # Round 1 also waits for the neighbours to start and connect: shown apart.
    later = np.array([float(e["latency_s"]) for e in rounds if int(e["round"]) > 1])
    missed = [int(e.get("missed", 0)) for e in rounds]
    return {
        "round_events": len(rounds),
        "latency_median_s": float(np.median(latencies)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "latency_p95_after_round_1_s": float(np.percentile(later, 95)),
        "latency_max_s": float(latencies.max()),
        "missed_parts": sum(missed),
        "rounds_with_missed": sum(m > 0 for m in missed),
    }


def _summary(result: MethodResult, out: Path, wall_s: float) -> dict[str, Any]:
    return {
        "accuracy_mean": result.final["accuracy_mean"],
        "accuracy_min": result.final["accuracy_min"],
        "bytes_per_node": result.final["bytes_per_node"],
        "wall_s": wall_s,
        **_timeline(out),
    }


def run(spec: ConsortiumSpec, profile: WanProfile | None) -> dict[str, Any]:
    """One run: on loopback (``profile`` None) or across namespaces."""
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0).first(SITES)
    out = Path(tempfile.mkdtemp(prefix="murmur-bench-wan-"))
    try:
        began = time.perf_counter()
        if profile is None:
            result, info = run_processes(out, data, spec, []), {"shaping": "loopback"}
        else:
            result, info = run_wan(out, data, spec, profile)
        summary = _summary(result, out, time.perf_counter() - began)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"deadline_s": spec.deadline_s, **info, **summary}


def main() -> None:
    reason = unavailable()
    if reason is not None:
        sys.exit(f"benchmarks.wan needs a shaped WAN: {reason}")
    profile = WanProfile.parse(PROFILE)
    spec = ConsortiumSpec(topology="ring", rounds=ROUNDS, compressor="top-k:0.1", eval_every=10)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "sites": SITES,
        "rounds": ROUNDS,
        "profile": PROFILE,
        "shaping": shaping_backend(),
        "model": spec.model,
    }
    report["loopback"] = run(spec, None)
    print(f"loopback: {report['loopback']}", flush=True)
    report["wan"] = run(spec, profile)
    print(f"wan: {report['wan']}", flush=True)
    loop, wan = report["loopback"], report["wan"]
    report["accuracy_gap_points"] = 100 * (loop["accuracy_mean"] - wan["accuracy_mean"])
    report["deadlines"] = [wan]
    for deadline in DEADLINES_S:
        row = run(replace(spec, deadline_s=deadline), profile)
        print(f"wan, deadline {deadline} s: {row}", flush=True)
        report["deadlines"].append(row)
    report["deadlines"].sort(key=lambda r: r["deadline_s"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "wan.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "wan.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    how = {
        "netem": "netem qdisc on each site's egress (delay ± jitter, rate, loss)",
        "nfqueue": (
            "no netem in this kernel: nfqueue backend (sim.wan_shaping): tbf for the "
            "rate on each site's egress; xtables statistic DROP for loss and an NFQUEUE "
            "delayer process (sim.wan_delay) for delay ± jitter, on each site's ingress"
        ),
    }[report["shaping"]]
    lines = [
        "# WAN benchmark: a consortium across network namespaces",
        "",
        f"Measured {report['date']}; {report['sites']} real node processes over libp2p, "
        f"Wisconsin (Dirichlet α 0.5), ring, {report['model']}, top-k 10%, "
        f"{report['rounds']} rounds. WAN profile `{report['profile']}` (one way, per "
        f"site uplink, per packet); shaping: {how}.",
        "",
        "| run | accuracy mean / worst | round latency median | p95 (from round 2) "
        "| sent per node | wall |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("loopback", "wan"):
        r = report[name]
        lines.append(
            f"| {'127.0.0.1' if name == 'loopback' else 'WAN'} | {_pct(r['accuracy_mean'])} / "
            f"{_pct(r['accuracy_min'])} | {_ms(r['latency_median_s'])} | "
            f"{_ms(r['latency_p95_s'])} ({_ms(r['latency_p95_after_round_1_s'])}) | "
            f"{r['bytes_per_node'] / 1e3:.0f} kB | {r['wall_s']:.1f} s |"
        )
    lines += [
        "",
        f"Accuracy gap loopback → WAN: {report['accuracy_gap_points']:+.2f} points "
        "(target: within 1 point).",
        "",
        "How round latency changes with the deadline (WAN; a missed part stays in its "
        "sender's backlog and goes with a later frame):",
        "",
        "| deadline | round latency median | p95 | accuracy mean / worst | parts missed "
        "| node-rounds with a miss | sent per node | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["deadlines"]:
        lines.append(
            f"| {r['deadline_s']:g} s | {_ms(r['latency_median_s'])} | "
            f"{_ms(r['latency_p95_s'])} | {_pct(r['accuracy_mean'])} / "
            f"{_pct(r['accuracy_min'])} | {r['missed_parts']} | "
            f"{r['rounds_with_missed']} of {r['round_events']} | "
            f"{r['bytes_per_node'] / 1e3:.0f} kB | {r['wall_s']:.1f} s |"
        )
    lines += [
        "",
        "Round latency counts from a round's start to its mix: local training, sending, "
        "and waiting (at most the deadline) for both ring neighbours' parts. Wall time "
        "includes starting the processes (and, on the WAN, building it) and the linger "
        "after the last round (up to two deadlines). Node-rounds: every node's `round` "
        "events (a node that catches up skips some). One run each: what depends on "
        "timing (parts missed, accuracy at short deadlines) varies from run to run.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

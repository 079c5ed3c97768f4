"""``make bench`` (audit log): what keeping it costs a round, and what it catches.

- Cost: the same 8-site consortium (Wisconsin, ring, top-k 10%, 40 rounds, real nodes on
  the in-memory transport, so a round is as short as it gets and the log's share as
  large) runs in one process with the audit log and with it replaced by one that writes
  nothing, taking turns five times over; the ratio of median round latencies is the
  log's cost, beside the pairs' mean difference and its 95% interval. Also each piece
  alone: an entry (its JSON and digest), the log's whole work a round (measured as CPU,
  its writer thread included), and a round's flush (one write and fsync of the log, and
  the signed head written atomically).
- The same A/B on real ``murmur node`` processes over libp2p on loopback, one process a
  site as at a hospital (4 sites, an MLP with 64 hidden units, 4 local steps a round,
  150 rounds): the reference processes run :mod:`benchmarks.unaudited_node`, the node
  with the silent log. The two runs take turns, five times, so the machine's load falls
  on both alike; the CPU a node spends a round (its start and finish events) is the
  steadier figure, reported with the 95% interval of the pairs' differences, which on
  this machine is wider than the 2% target. The log's own CPU a round, measured alone,
  is the sharper figure for what the log itself does.
- Tampering: 1,000 random edits, re-signings by another key, deletions, reorderings,
  truncations and cuts of a 224-entry log written a round (8 entries) at a time, each
  of which ``verify`` must catch at the right entry.

Writes ``benchmarks/results/audit.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from crypto.identity import SiteIdentity
from node.audit.check import verify
from node.audit.log import LOG_FILE, AuditLog, frame_digest
from node.training.trainer import TrainConfig
from sim.audit_tamper import random_tampering
from sim.consortium import ConsortiumSpec, write_consortium
from sim.own_loops import memory_nodes, run_nodes
from sim.prep import dirichlet_sites
from sim.process import run_processes
from sim.run_timeline import cpu_s_per_round, read_timeline

RESULTS = Path(__file__).parent / "results"
SITES, ROUNDS = 8, 40


class Silent(AuditLog):
    """The audit log with nothing written or signed: the reference run."""

    def append(self, kind: str, **data: Any) -> None:
        return None

    def flush(self) -> None:
        return None


def _latencies(out: Path, audit: bool) -> list[float]:
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0)
    data = data.first(SITES)
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")
    spec = ConsortiumSpec(rounds=ROUNDS, train=train, compressor="top-k:0.1", deadline_s=2.0)
    nodes = memory_nodes(write_consortium(out, data, spec))
    if not audit:
        for node in nodes:
            node.audit = Silent(node.config.site.state_dir, node.identity)
    asyncio.run(run_nodes(nodes))
    return [
        float(e["latency_s"])
        for node in nodes
        for e in map(json.loads, node.log.log_stream.getvalue().splitlines())  # type: ignore[attr-defined]
        if e["event"] == "round"
    ]


PROCESS_SITES, PROCESS_ROUNDS, REPEATS, PROCESS_PAIRS = 4, 150, 5, 5


def paired_interval(on: list[float], off: list[float]) -> tuple[float, float, float]:
    """The mean of the paired differences ``on - off`` and its 95% t-interval: how
    precisely a run of on/off pairs pins a cost down on a machine whose load drifts
    (a run's CPU a round moves by several percent from one run to the next)."""
    from scipy import stats

    diffs = [a - b for a, b in zip(on, off, strict=True)]
    mean = statistics.mean(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def _process_run(out: Path, audit: bool) -> tuple[list[float], float]:
    """Round latencies of real node processes, with the log or with the silent one, and
    the CPU seconds a node spent per round (from its start and finish events)."""
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0).first(PROCESS_SITES)
    train = TrainConfig(optimizer="sgd", lr=0.1, batch_size=16, local_steps=4)
    spec = ConsortiumSpec(
        rounds=PROCESS_ROUNDS, model="mlp:64", train=train, compressor="top-k:0.1"
    )
    modules = None if audit else dict.fromkeys(range(PROCESS_SITES), "benchmarks.unaudited_node")
    run_processes(out, data, spec, kills=[], modules=modules)
    events = read_timeline(out / "timeline.jsonl")
    latencies = [float(e["latency_s"]) for e in events if e.get("event") == "round"]
    return latencies, cpu_s_per_round(events, PROCESS_ROUNDS)


def _pieces(scratch: Path) -> dict[str, float]:
    log = AuditLog(scratch, SiteIdentity.generate())
    began = time.perf_counter()
    for i in range(2000):
        log.append("sent", peer="p" * 52, round=i, topic="update", digest="0" * 32, bytes=900)
    entry_s = (time.perf_counter() - began) / 2000
    flushes = []
    for i in range(50):
        for _ in range(8):
            log.append("received", peer="p" * 52, round=i, topic="update", digest="0" * 32)
        began = time.perf_counter()
        log.close_round(i, [], None)
        flushes.append(time.perf_counter() - began)
    log.close()
    return {"entry_s": entry_s, "flush_s": statistics.median(flushes), **_round_work(scratch)}


def _round_work(scratch: Path, rounds: int = 400) -> dict[str, float]:
    """The CPU the log's own work costs a ring node a round, its writer thread included:
    two frames sent and two received (their digests and entries), the round's entry and
    write, the two checkpoints' tails, and its share of the syncs. Rounds are paced 4 ms
    apart so the syncs keep up as they do between real rounds."""
    (scratch / "round").mkdir()
    log = AuditLog(scratch / "round", SiteIdentity.generate())
    peers = [SiteIdentity.generate().peer_id for _ in range(2)]
    frame = random.Random(3).randbytes(1200)
    began = time.process_time()  # the process's CPU: sleeping costs none
    for r in range(rounds):
        for kind in ("sent", "received"):
            for peer in peers:
                log.append(kind, peer=peer, round=r, topic="update", digest=frame_digest(frame))
            if kind == "sent":
                log.tail()  # the write-ahead checkpoint
        log.end_round(r + 1, [], None)
        log.tail()  # the checkpoint after the round
        time.sleep(0.004)
    log.close()  # the syncs the writer thread did are in the process's CPU too
    return {"round_cpu_s": (time.process_time() - began) / rounds}


def _tamperings(scratch: Path) -> dict[str, Any]:
    identity = SiteIdentity.generate()
    log = AuditLog(scratch, identity)
    log.append("start", peer_id=identity.peer_id, round=0)
    for i in range(1, 200):
        log.append("sent", peer="p", round=i // 8, topic="update", digest=f"{i:032x}", bytes=i)
        if i % 8 == 0:  # a round's write: its last entry signed, as a node's are
            log.close_round(i // 8, [], None)
    log.flush()
    path = scratch / LOG_FILE
    lines = path.read_text().splitlines()
    rng = random.Random(11)
    caught: dict[str, list[int]] = {}
    for _ in range(1000):
        kind, tampered, first_bad = random_tampering(lines, rng)
        path.write_text("".join(line + "\n" for line in tampered))
        verdict = verify(path, identity.peer_id)
        right = not verdict.ok and verdict.first_bad == first_bad
        caught.setdefault(kind, [0, 0])[0] += 1
        caught[kind][1] += right
    return {kind: {"tried": t, "caught": c} for kind, (t, c) in sorted(caught.items())}


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        with_log: list[float] = []
        without: list[float] = []
        run_with: list[float] = []  # each run's median round
        run_without: list[float] = []
        for k in range(REPEATS):  # in turns, so the machine's load falls on both alike
            with_log += (latencies := _latencies(root / f"with-{k}", audit=True))
            run_with.append(statistics.median(latencies))
            without += (latencies := _latencies(root / f"without-{k}", audit=False))
            run_without.append(statistics.median(latencies))
        (root / "pieces").mkdir()
        pieces = _pieces(root / "pieces")
        usual_with: list[float] = []
        usual_without: list[float] = []
        cpu_with: list[float] = []
        cpu_without: list[float] = []
        for k in range(PROCESS_PAIRS):
            latencies, cpu = _process_run(root / f"process-with-{k}", audit=True)
            usual_with += latencies
            cpu_with.append(cpu)
            latencies, cpu = _process_run(root / f"process-without-{k}", audit=False)
            usual_without += latencies
            cpu_without.append(cpu)
        (root / "tamper").mkdir()
        tamper = _tamperings(root / "tamper")
    median_with, median_without = statistics.median(with_log), statistics.median(without)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "sites": SITES,
        "rounds": ROUNDS,
        "process_rounds": PROCESS_ROUNDS,
        "median_round_s_with_log": median_with,
        "median_round_s_without_log": median_without,
        "cost_fraction": median_with / median_without - 1.0,
        "cost_fraction_interval": [
            x / statistics.mean(run_without) for x in paired_interval(run_with, run_without)
        ],
        **pieces,
        "process_median_round_s_with_log": statistics.median(usual_with),
        "process_median_round_s_without_log": statistics.median(usual_without),
        "process_cost_fraction": statistics.median(usual_with) / statistics.median(usual_without)
        - 1.0,
        "process_cpu_s_per_round_with_log": statistics.mean(cpu_with),
        "process_cpu_s_per_round_without_log": statistics.mean(cpu_without),
        "process_cpu_s_per_round_runs": {"with_log": cpu_with, "without_log": cpu_without},
        "process_cpu_cost_fraction_interval": [
            x / statistics.mean(cpu_without) for x in paired_interval(cpu_with, cpu_without)
        ],
        "round_cpu_fraction": pieces["round_cpu_s"] / statistics.mean(cpu_without),
        "tamperings": tamper,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(report, indent=2))
    caught = sum(v["caught"] for v in tamper.values())
    tried = sum(v["tried"] for v in tamper.values())
    lines = [
        "# Audit log benchmarks",
        "",
        f"Measured {report['date']}; {SITES} real nodes on the memory transport, Wisconsin, "
        f"ring, top-k 10%, {ROUNDS} rounds (the shortest rounds a node runs, so the log's "
        f"largest share); on and off take turns, {REPEATS} runs each; the real processes "
        f"{PROCESS_PAIRS} pairs.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| median round, audit log on | {1000 * median_with:.2f} ms | — |",
        f"| median round, audit log off | {1000 * median_without:.2f} ms | — |",
        f"| cost of the log, memory transport | {100 * report['cost_fraction']:+.1f}% of a round "
        "(the {} pairs' mean {:+.1f}% [95% interval {:+.1f}%, {:+.1f}%]) | ≤ 2% |".format(
            REPEATS, *(100 * x for x in report["cost_fraction_interval"])
        ),
        f"| real processes ({PROCESS_SITES} sites, MLP 64, 4 local steps, {PROCESS_ROUNDS} "
        "rounds, on and off in turns): median round, on / off | "
        f"{1000 * report['process_median_round_s_with_log']:.2f} / "
        f"{1000 * report['process_median_round_s_without_log']:.2f} ms | — |",
        f"| cost of the log, real processes | {100 * report['process_cost_fraction']:+.1f}% "
        "| ≤ 2% |",
        f"| real processes: CPU a node spends a round, on / off | "
        f"{1000 * report['process_cpu_s_per_round_with_log']:.2f} / "
        f"{1000 * report['process_cpu_s_per_round_without_log']:.2f} ms | — |",
        "| real processes: CPU cost of the log, mean of {} on/off pairs [95% interval] | "
        "{:+.1f}% [{:+.1f}%, {:+.1f}%] | ≤ 2% |".format(
            PROCESS_PAIRS, *(100 * x for x in report["process_cpu_cost_fraction_interval"])
        ),
        f"| one entry (JSON and its digest; a write's last also signed) | "
        f"{1e6 * pieces['entry_s']:.0f} µs | — |",
        f"| the log's own CPU a round, writer thread included (4 frames, its round entry, "
        f"two tails) | {1e6 * pieces['round_cpu_s']:.0f} µs = "
        f"{100 * report['round_cpu_fraction']:.1f}% of a real node's round CPU | ≤ 2% |",
        f"| a round's flush (write + fsync, signed head) | {1000 * pieces['flush_s']:.2f} ms | — |",
        f"| tamperings caught at the right entry | {caught} / {tried} | all |",
        "",
        "| tampering | tried | caught |",
        "|---|---|---|",
        *(f"| {k} | {v['tried']} | {v['caught']} |" for k, v in tamper.items()),
    ]
    (RESULTS / "audit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

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
- The sharpest of the three: the same real processes keeping a :class:`Blinking` log,
  kept for 24 rounds and silent for 24, in turn, within each run (24 runs of 384 rounds,
  taking turns at which block comes first), so rounds with and without the log share the
  machine's load at the same moment. Each process notes its CPU clock at each round's
  end; each run estimates the cost as the mean difference between its adjacent blocks,
  and the figure is the mean of the runs' estimates with its 95% interval over runs:
  runs differ by more than their own intervals (the machine's state moves between them),
  so the run is the unit, not the block pair.
- Tampering: 1,000 random edits, re-signings by another key, deletions, reorderings,
  truncations and cuts of a 224-entry log written a round (8 entries) at a time, each
  of which ``verify`` must catch at the right entry.

Writes ``benchmarks/results/audit.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from crypto.identity import SiteIdentity
from node.audit.check import verify
from node.audit.log import LOG_FILE, AuditLog
from node.state import checkpoint
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

    def frame(self, kind: str, peer: str, round: int, topic: str, body: bytes, size: int) -> None:
        return None

    def flush(self) -> None:
        return None

    def _sync_due(self) -> bool:
        return False


# A blinking log is kept this many rounds, then silent as many, in turn, and syncs once at
# the end of each kept block: about as often as the log syncs on its own in these runs
# (every SYNC_EVERY_S = 1 s, or about 30 of the real processes' 30-odd ms rounds), a
# little more often, so the cost is not understated.
BLOCK = 24
BLINK_FIRST = "MURMUR_BENCH_AUDIT_FIRST"  # "on" or "off": the block a blinking run starts with
BLINK_CPU = "blink-cpu.json"  # a blinking log's (round, process CPU s) at each round's end


def kept(t: int, first_on: bool) -> bool:
    """Whether a blinking log is kept in round ``t`` (0-based)."""
    return ((t // BLOCK) % 2 == 0) == first_on


class Blinking(AuditLog):
    """The audit log kept in alternate blocks of :data:`BLOCK` rounds and silent in the
    others, so one run holds its own reference: rounds with and without the log run side
    by side under the same load, where separate runs on this machine differ by several
    percent from one to the next. A kept block ends with everything written and synced,
    on the round (so counted against the log), so no entry of it rides along in the
    silent block's checkpoints. The process reads which block comes first from
    :data:`BLINK_FIRST`, so runs can take turns and a drift within a run cancels. It
    notes the process's CPU clock at each round's end and writes the notes beside the log
    when the node closes it (:data:`BLINK_CPU`): the CPU a round costs is far steadier than
    its wall time, which waits on the slowest neighbour."""

    def __init__(self, state_dir: Path, identity: SiteIdentity) -> None:
        super().__init__(state_dir, identity)
        self.first_on = os.environ.get(BLINK_FIRST, "on") == "on"
        self.next_round = 0
        self.cpu: list[tuple[int, float]] = []

    def append(self, kind: str, **data: Any) -> None:
        if kept(self.next_round, self.first_on):
            super().append(kind, **data)

    def frame(self, kind: str, peer: str, round: int, topic: str, body: bytes, size: int) -> None:
        if kept(self.next_round, self.first_on):
            super().frame(kind, peer, round, topic, body, size)

    def _sync_due(self) -> bool:
        return False  # each kept block ends with its sync (end_round)

    def end_round(self, round: int, missed: list[str], eps_spent: float | None) -> None:
        if kept(self.next_round, self.first_on):
            super().end_round(round, missed, eps_spent)
            if not kept(round, self.first_on):  # nothing carried into a silent block
                self.flush()
        self.next_round = round
        self.cpu.append((round, time.process_time()))

    def close(self) -> None:
        super().close()
        (self.path.parent / BLINK_CPU).write_text(json.dumps(self.cpu))


def cpu_by_round(notes: list[tuple[int, float]]) -> dict[int, list[float]]:
    """A blinking log's CPU notes as the CPU seconds of each 0-based round: from one
    round's end to the next, so a round's checkpoint and report after its end fall in the
    next round (the first round of a block is left out of :func:`block_pairs` for this)."""
    return {int(r1) - 1: [c1 - c0] for (r0, c0), (r1, c1) in pairwise(notes) if r1 == r0 + 1}


def block_pairs(latencies: dict[int, list[float]], first_on: bool) -> list[tuple[float, float]]:
    """(mean round latency with the log, without it) of each pair of adjacent blocks of a
    blinking run, keyed by 0-based round. The first pair (warm-up) is left out, and so is
    each block's first round: the writes and the sync the previous block started spill
    into it."""
    means: dict[int, list[float]] = {}
    for t, values in latencies.items():
        if t % BLOCK:
            means.setdefault(t // BLOCK, []).append(statistics.mean(values))
    pairs = []
    for block in range(2, max(means, default=0), 2):
        if block in means and block + 1 in means:
            a, b = statistics.mean(means[block]), statistics.mean(means[block + 1])
            pairs.append((a, b) if kept(block * BLOCK, first_on) else (b, a))
    return pairs


def _memory_run(
    out: Path, rounds: int, log: Callable[[Path, SiteIdentity], AuditLog] | None
) -> dict[int, list[float]]:
    """Every node's round latencies by 0-based round, the log replaced by ``log`` when given."""
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0)
    data = data.first(SITES)
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")
    spec = ConsortiumSpec(rounds=rounds, train=train, compressor="top-k:0.1", deadline_s=2.0)
    nodes = memory_nodes(write_consortium(out, data, spec))
    if log is not None:
        for node in nodes:
            node.audit = log(node.config.site.state_dir, node.identity)
    asyncio.run(run_nodes(nodes))
    return latency_by_round(
        e
        for node in nodes
        for e in map(json.loads, node.log.log_stream.getvalue().splitlines())  # type: ignore[attr-defined]
    )


def latency_by_round(events: Iterable[dict[str, Any]]) -> dict[int, list[float]]:
    """Every ``round`` event's latency, by 0-based round."""
    latencies: dict[int, list[float]] = {}
    for e in events:
        if e.get("event") == "round":
            latencies.setdefault(int(e["round"]) - 1, []).append(float(e["latency_s"]))
    return latencies


def _latencies(out: Path, audit: bool) -> list[float]:
    by_round = _memory_run(out, ROUNDS, None if audit else Silent)
    return [x for values in by_round.values() for x in values]


def _memory_blink(
    out: Path, first_on: bool
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Block pairs of the round latencies and of the process CPU a round (all the nodes,
    one process) of a run on the memory transport keeping :class:`Blinking` logs."""
    logs: list[Blinking] = []

    def log(state_dir: Path, identity: SiteIdentity) -> AuditLog:
        logs.append(Blinking(state_dir, identity))
        logs[-1].first_on = first_on
        return logs[-1]

    wall = block_pairs(_memory_run(out, BLINK_ROUNDS, log), first_on)
    return wall, block_pairs(cpu_by_round(logs[0].cpu), first_on)


PROCESS_SITES, PROCESS_ROUNDS, REPEATS, PROCESS_PAIRS = 4, 150, 5, 5
BLINK_ROUNDS, BLINK_RUNS, PROCESS_BLINK_RUNS = 384, 6, 24


def paired_interval(on: list[float], off: list[float]) -> tuple[float, float, float]:
    """The mean of the paired differences ``on - off`` and its 95% t-interval: how
    precisely a run of on/off pairs pins a cost down on a machine whose load drifts
    (a run's CPU a round moves by several percent from one run to the next)."""
    from scipy import stats

    diffs = [a - b for a, b in zip(on, off, strict=True)]
    mean = statistics.mean(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def _process_run(out: Path, audit: bool) -> tuple[list[float], float, float]:
    """Round latencies of real node processes, with the log or with the silent one, the
    CPU seconds a node spent per round (from its start and finish events), and the wall
    seconds a round that the nodes' logs counted themselves (``audit_s``, as an operator
    sees it in the metrics)."""
    module = None if audit else "benchmarks.unaudited_node"
    events = _process_events(out, PROCESS_ROUNDS, module)
    rounds = [e for e in events if e.get("event") == "round"]
    own = {e["node"]: float(e["audit_s"]) for e in rounds}  # the last round's running total
    own_s = statistics.mean(own.values()) / PROCESS_ROUNDS
    latencies = [float(e["latency_s"]) for e in rounds]
    return latencies, cpu_s_per_round(events, PROCESS_ROUNDS), own_s


def _process_events(out: Path, rounds: int, module: str | None) -> list[dict[str, Any]]:
    """The timeline of a run of real node processes, every site running ``module``."""
    data = dirichlet_sites("breast-cancer", 16, 0.5, 0).first(PROCESS_SITES)
    # No validation stop: its scoring every few rounds would fall unevenly on a blinking
    # run's blocks (every round is then alike: each trains, evaluates and checkpoints).
    train = TrainConfig(optimizer="sgd", lr=0.1, batch_size=16, local_steps=4, stop_patience=0)
    spec = ConsortiumSpec(rounds=rounds, model="mlp:64", train=train, compressor="top-k:0.1")
    modules = None if module is None else dict.fromkeys(range(PROCESS_SITES), module)
    run_processes(out, data, spec, kills=[], modules=modules)
    return read_timeline(out / "timeline.jsonl")


def _process_blink(
    out: Path, first_on: bool
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Block pairs of the round latencies, and of each process's CPU a round, of a run of
    real node processes keeping :class:`Blinking` logs."""
    os.environ[BLINK_FIRST] = "on" if first_on else "off"
    try:
        events = _process_events(out, BLINK_ROUNDS, "benchmarks.blinking_audit_node")
    finally:
        del os.environ[BLINK_FIRST]
    cpu = [
        pair
        for notes in sorted(out.rglob(BLINK_CPU))
        for pair in block_pairs(cpu_by_round(json.loads(notes.read_text())), first_on)
    ]
    return block_pairs(latency_by_round(events), first_on), cpu


def run_interval(estimates: list[float]) -> list[float]:
    """The mean of each run's own estimate and its 95% t-interval, the run the unit: block
    pairs of one run share that run's machine state (which cores, what else ran), so runs
    differ by more than an interval pooled over block pairs allows (measured: three runs of
    8 gave +0.1% [-1.0, +1.2], +0.9% [-0.0, +1.9] and +2.3% [+1.6, +3.0]); an interval over
    runs holds that spread."""
    return list(paired_interval(estimates, [0.0] * len(estimates)))


def blink_cost(pairs: list[tuple[float, float]]) -> list[float]:
    """The log's cost as a fraction of a round without it, from a blinking run's block
    pairs: the mean paired difference and its 95% interval."""
    on, off = [a for a, _ in pairs], [b for _, b in pairs]
    return [x / statistics.mean(off) for x in paired_interval(on, off)]


def _pieces(scratch: Path, pace_s: float) -> dict[str, float]:
    log = AuditLog(scratch, SiteIdentity.generate())
    frame = random.Random(5).randbytes(1200)
    began = time.perf_counter()
    for i in range(2000):  # noted, then sealed two at a time, as a ring node's are
        log.frame("sent", "p" * 52, i, "update", frame, len(frame))
        if i % 2 == 1:
            log.tail()
    entry_s = (time.perf_counter() - began) / 2000
    flushes = []
    for i in range(50):
        for _ in range(8):
            log.frame("received", "p" * 52, i, "update", frame, len(frame))
        began = time.perf_counter()
        log.close_round(i, [], None)
        flushes.append(time.perf_counter() - began)
    log.close()
    return {
        "entry_s": entry_s,
        "flush_s": statistics.median(flushes),
        "round_pace_s": pace_s,
        **_round_work(scratch, pace_s),
    }


def _round_work(scratch: Path, pace_s: float, rounds: int = 400) -> dict[str, float]:
    """The CPU the log's own work costs a ring node a round, its writer thread included:
    two frames sent and two received (their digests and entries), the round's entry, the
    two checkpoints' tails, and its share of the writes and syncs, in a node's order: the
    write-ahead checkpoint, then the frames sent, then those received, except that one
    round in four one neighbour's frame comes before the write-ahead checkpoint (the real
    processes below: 76% of write-ahead checkpoints had no new entry, the rest one or
    two frames received, measured with this log's sizes at each tail). Rounds are paced
    ``pace_s`` apart, the real processes' median round, so the log writes and syncs as
    often as it does there (every ``SYNC_EVERY_S``), and caches go as cold between rounds;
    the CPU the pacing itself costs (a sleep's wake-up, measured alone) is taken off.
    Besides: what carrying the tail costs the two checkpoints a round (pickled, written
    and fsynced with the rest), as the CPU of a checkpoint of a node's size with the tail
    less the same checkpoint with an empty one, the two taken in turns."""
    began = time.process_time()
    for _ in range(rounds):
        time.sleep(pace_s)
    pacing = time.process_time() - began
    (scratch / "round").mkdir()
    log = AuditLog(scratch / "round", SiteIdentity.generate())
    peers = [SiteIdentity.generate().peer_id for _ in range(2)]
    frame = random.Random(3).randbytes(1200)
    tails: list[str] = []
    began = time.process_time()  # the process's CPU: sleeping costs none
    for r in range(rounds):
        early = peers[:1] if r % 4 == 0 else []  # received before this site sent
        for peer in early:
            log.frame("received", peer, r, "update", frame, len(frame))
        tails.append(log.tail())  # the write-ahead checkpoint, before the site sends
        for peer in peers:
            log.frame("sent", peer, r, "update", frame, len(frame))
        for peer in peers[len(early) :]:
            log.frame("received", peer, r, "update", frame, len(frame))
        log.end_round(r + 1, [], None)
        tails.append(log.tail())  # the checkpoint after the round
        time.sleep(pace_s)
    log.close()  # the syncs the writer thread did are in the process's CPU too
    own = (time.process_time() - began - pacing) / rounds
    # A checkpoint of the benchmark's nodes' size: the MLP 64's 2,114 parameters in the
    # model, its public copy, s and the exchange's copies.
    state = {"model": [torch.randn(2114) for _ in range(6)], "round": 0}
    with_tail = without = 0.0
    for k, tail in enumerate(tails):
        for carried in (True, False) if k % 2 else (False, True):
            began = time.thread_time()
            text = tail if carried else ""
            checkpoint.save(scratch / "round" / "ckpt.pt", {**state, "audit_tail": text})
            spent = time.thread_time() - began
            if carried:
                with_tail += spent
            else:
                without += spent
        time.sleep(pace_s / 4)
    return {"round_cpu_s": own, "tail_checkpoint_cpu_s": (with_tail - without) / rounds}


def _tamperings(scratch: Path) -> dict[str, Any]:
    identity = SiteIdentity.generate()
    log = AuditLog(scratch, identity)
    log.append("start", peer_id=identity.peer_id, round=0)
    frames = random.Random(13)
    for r in range(66):  # rounds of three entries: frames received, frames sent, the round
        for way in ("received", "sent"):
            for peer in ("a", "b"):
                log.frame(way, peer, r, "update", frames.randbytes(64), 64 + r)
            log.tail()  # a seal ends a batch
        if r % 3 == 2:  # a write every three rounds: its last entry signed
            log.close_round(r + 1, [], None)
        else:
            log.append("round", round=r + 1, missed=[], eps_spent=None)
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
        usual_with: list[float] = []
        usual_without: list[float] = []
        cpu_with: list[float] = []
        cpu_without: list[float] = []
        own: list[float] = []
        for k in range(PROCESS_PAIRS):
            latencies, cpu, own_s = _process_run(root / f"process-with-{k}", audit=True)
            usual_with += latencies
            cpu_with.append(cpu)
            own.append(own_s / statistics.median(latencies))
            latencies, cpu, _ = _process_run(root / f"process-without-{k}", audit=False)
            usual_without += latencies
            cpu_without.append(cpu)
        (root / "pieces").mkdir()
        pieces = _pieces(root / "pieces", statistics.median(usual_with))
        blink_wall: list[tuple[float, float]] = []
        blink_cpu: list[tuple[float, float]] = []
        blink_runs: list[float] = []  # each run's own estimate of the CPU cost
        blink_wall_runs: list[float] = []  # and of the latency cost
        for k in range(PROCESS_BLINK_RUNS):
            wall, cpu_pairs = _process_blink(root / f"blink-{k}", first_on=k % 2 == 0)
            blink_wall += wall
            blink_cpu += cpu_pairs
            blink_runs.append(blink_cost(cpu_pairs)[0])
            blink_wall_runs.append(blink_cost(wall)[0])
            print(
                f"blinking run {k + 1}/{PROCESS_BLINK_RUNS}: CPU {100 * blink_runs[-1]:+.1f}%, "
                f"latency {100 * blink_wall_runs[-1]:+.1f}%",
                flush=True,
            )
        memory_wall: list[tuple[float, float]] = []
        memory_cpu: list[tuple[float, float]] = []
        for k in range(BLINK_RUNS):
            wall, cpu_pairs = _memory_blink(root / f"memory-blink-{k}", first_on=k % 2 == 0)
            memory_wall += wall
            memory_cpu += cpu_pairs
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
        "round_cpu_fraction": (pieces["round_cpu_s"] + pieces["tail_checkpoint_cpu_s"])
        / statistics.mean(cpu_without),
        "round_time_fraction": (pieces["round_cpu_s"] + pieces["tail_checkpoint_cpu_s"])
        / pieces["round_pace_s"],
        "process_own_fraction_runs": own,
        "blink_rounds": BLINK_ROUNDS,
        "blink_block": BLOCK,
        "process_blink_runs": PROCESS_BLINK_RUNS,
        "process_blink_cpu_s_per_round": {
            "with_log": statistics.mean(a for a, _ in blink_cpu),
            "without_log": statistics.mean(b for _, b in blink_cpu),
        },
        "process_blink_cpu_cost": blink_cost(blink_cpu),
        "process_blink_cpu_cost_runs": blink_runs,
        "process_blink_cpu_cost_over_runs": run_interval(blink_runs),
        "process_blink_wall_cost": blink_cost(blink_wall),
        "process_blink_wall_cost_runs": blink_wall_runs,
        "process_blink_wall_cost_over_runs": run_interval(blink_wall_runs),
        "memory_blink_cpu_s_per_round": {
            "with_log": statistics.mean(a for a, _ in memory_cpu),
            "without_log": statistics.mean(b for _, b in memory_cpu),
        },
        "memory_blink_cpu_cost": blink_cost(memory_cpu),
        "memory_blink_wall_cost": blink_cost(memory_wall),
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
        "| **real processes, the log kept and silent in alternate blocks of {} rounds within "
        "each run** ({} runs × {} rounds, 4 sites each; a block's first round and each run's "
        "first pair of blocks left out): CPU a round, kept / silent | {:.2f} / {:.2f} ms "
        "| — |".format(
            BLOCK,
            PROCESS_BLINK_RUNS,
            BLINK_ROUNDS,
            *(1000 * v for v in report["process_blink_cpu_s_per_round"].values()),
        ),
        "| ↳ **round latency cost of the log**, mean of the {} runs' own estimates [95% "
        "interval over runs] | **{:+.1f}%** [{:+.1f}%, {:+.1f}%] | ≤ 2% of round time |".format(
            PROCESS_BLINK_RUNS, *(100 * x for x in report["process_blink_wall_cost_over_runs"])
        ),
        "| ↳ **CPU cost of the log**, mean of the {} runs' own estimates [95% interval over "
        "runs] | **{:+.1f}%** [{:+.1f}%, {:+.1f}%] | ≤ 2% |".format(
            PROCESS_BLINK_RUNS, *(100 * x for x in report["process_blink_cpu_cost_over_runs"])
        ),
        "| ↳ the same pooled over {} block pairs, CPU / latency [95% interval, block pairs "
        "taken as independent] | {:+.1f}% [{:+.1f}%, {:+.1f}%] / {:+.1f}% [{:+.1f}%, "
        "{:+.1f}%] | — |".format(
            len(blink_cpu),
            *(100 * x for x in report["process_blink_cpu_cost"]),
            *(100 * x for x in report["process_blink_wall_cost"]),
        ),
        "| ↳ each run alone, CPU | {} | — |".format(
            ", ".join(f"{100 * x:+.1f}%" for x in blink_runs)
        ),
        "| ↳ each run alone, latency | {} | — |".format(
            ", ".join(f"{100 * x:+.1f}%" for x in blink_wall_runs)
        ),
        "| memory transport, alternate blocks ({} runs × {} rounds, 8 sites in one process, "
        "{:.2f} / {:.2f} ms of CPU a round kept / silent, all 8 sites): "
        "CPU cost [95% interval] / round latency cost [95% interval] | {:+.1f}% [{:+.1f}%, "
        "{:+.1f}%] / {:+.1f}% [{:+.1f}%, {:+.1f}%] | ≤ 2% |".format(
            BLINK_RUNS,
            BLINK_ROUNDS,
            *(1000 * v for v in report["memory_blink_cpu_s_per_round"].values()),
            *(100 * x for x in report["memory_blink_cpu_cost"]),
            *(100 * x for x in report["memory_blink_wall_cost"]),
        ),
        "| the log's time as the nodes count it themselves (``audit_s``), of the median "
        "round, in each run with the log | {} | ≤ 2% |".format(
            ", ".join(f"{100 * x:.1f}%" for x in own)
        ),
        f"| one frame logged (its digest and note; then its JSON, and half of its "
        f"``frames`` entry's line and chain digest, two frames an entry as a ring node's) | "
        f"{1e6 * pieces['entry_s']:.0f} µs | — |",
        f"| the log's own CPU a round, writer thread included (4 frames, its round entry, "
        f"two tails, its share of the writes and syncs; rounds "
        f"{1000 * pieces['round_pace_s']:.0f} ms apart as in the real processes), and what "
        f"the tail adds to the round's two checkpoints (the difference of two noisy "
        f"measures) | {1e6 * pieces['round_cpu_s']:.0f} "
        f"{1e6 * pieces['tail_checkpoint_cpu_s']:+.0f} µs = "
        f"{100 * report['round_time_fraction']:.1f}% of a real node's median round "
        f"({100 * report['round_cpu_fraction']:.1f}% of the CPU it spends a round: every call "
        f"of the log meets cold caches here, so this is its most) | ≤ 2% of round time |",
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

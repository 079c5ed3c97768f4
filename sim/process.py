"""Multi-process simulator: N real ``murmur node`` processes on 127.0.0.1 over libp2p.

Each node gets its own directory (key, data shard, ``site.toml``, checkpoint, JSON-line
log). The supervisor watches the logs for round progress, SIGKILLs and restarts nodes on
schedule (``--kill 3@20:40``), and at the end merges every log into ``timeline.jsonl``
and the round events into the same ``MethodResult`` the in-process backend produces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.consortium import ConsortiumSpec, write_consortium
from sim.errors import SimError
from sim.faults import Crash
from sim.prep import FederatedData
from sim.results import MethodResult
from sim.segmentation import FederatedCases

NODE_MODULE = "node.cli"


@dataclass
class _Proc:
    index: int
    config: Path
    module: str = NODE_MODULE  # what runs the site; tests swap in a hostile member
    prefix: tuple[str, ...] = ()  # e.g. `ip netns exec NAME` for a site in a namespace
    popen: subprocess.Popen[bytes] | None = None
    offset: int = 0
    round: int = 0
    finished: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.config.parent / "node.jsonl"

    def spawn(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # The child keeps its own copies of these descriptors; ours close right away.
        with (
            open(self.config.parent / "stderr.log", "ab") as stderr,
            open(self.log_path, "ab") as log,
        ):
            self.popen = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", self.module, *self._args()],
                stdout=log,
                stderr=stderr,
                env=env,
            )

    def _args(self) -> list[str]:
        command = ["node"] if self.module == NODE_MODULE else []
        return [*command, "--config", str(self.config)]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def poll_log(self) -> None:
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        for line in data[:complete].splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if event.get("event") == "round":
                self.round = max(self.round, int(event["round"]))
            if event.get("event") == "finish":
                self.finished = True


def run_processes(
    out: Path,
    data: FederatedData | FederatedCases,
    spec: ConsortiumSpec,
    kills: list[Crash],
    timeout_s: float = 600.0,
    tick: Callable[[int], None] | None = None,
    modules: dict[int, str] | None = None,
    prefixes: Sequence[Sequence[str]] | None = None,
) -> MethodResult:
    """Run the consortium to completion and collect its curves. ``modules`` runs some
    sites with another module than ``node.cli`` (taking ``--config``), for tests;
    ``prefixes`` starts node i's process under ``prefixes[i]`` (``ip netns exec NAME``,
    with ``spec.hosts`` giving each namespace's address: :mod:`sim.netns`)."""
    n = len(data.train)
    for kill in kills:
        if not 0 <= kill.node < n:
            raise SimError(f"--kill names node {kill.node}; nodes are 0..{n - 1}")
    configs = write_consortium(out / "nodes", data, spec)
    procs = [
        _Proc(
            i,
            path,
            (modules or {}).get(i, NODE_MODULE),
            tuple(prefixes[i]) if prefixes else (),
        )
        for i, path in enumerate(configs)
    ]
    began = time.perf_counter()
    supervisor: list[dict[str, Any]] = []
    for proc in procs:
        proc.spawn()
    pending = list(kills)
    down: dict[int, Crash] = {}
    try:
        while True:
            time.sleep(0.05)
            for proc in procs:
                proc.poll_log()
            progress = max(p.round for p in procs)
            for kill in list(pending):
                proc = procs[kill.node]
                if proc.round >= kill.at and proc.alive() and proc.popen is not None:
                    proc.popen.send_signal(signal.SIGKILL)
                    proc.popen.wait()
                    pending.remove(kill)
                    down[kill.node] = kill
                    supervisor.append(
                        {
                            "t": time.time(),
                            "event": "killed",
                            "node": kill.node,
                            "round": proc.round,
                        }
                    )
            for node, kill in list(down.items()):
                if kill.restart is not None and progress >= kill.restart:
                    procs[node].spawn()
                    del down[node]
                    supervisor.append(
                        {"t": time.time(), "event": "restarted", "node": node, "round": progress}
                    )
            if tick:
                tick(progress)
            running = [p for p in procs if p.alive()]
            restarts_due = any(k.restart is not None for k in down.values())
            if not running and not pending and not restarts_due:
                break
            if time.perf_counter() - began > timeout_s:
                raise SimError(f"the node processes did not finish within {timeout_s:g} s")
    finally:
        for proc in procs:
            if proc.alive() and proc.popen is not None:
                proc.popen.terminate()
                proc.popen.wait(10)
            proc.poll_log()
    failed = [p.index for p in procs if not p.finished and p.index not in {k.node for k in kills}]
    if failed:
        raise SimError(
            f"nodes {failed} exited without finishing; see {out}/nodes/node-*/stderr.log"
        )
    timeline = sorted(
        [e for p in procs for e in p.events] + supervisor, key=lambda e: float(e.get("t", 0))
    )
    with open(out / "timeline.jsonl", "w") as handle:
        for event in timeline:
            handle.write(json.dumps(event) + "\n")
    return _result(procs, spec, time.perf_counter() - began, survivors=_survivors(n, kills))


def _survivors(n: int, kills: list[Crash]) -> list[int]:
    gone = {k.node for k in kills if k.restart is None}
    return [i for i in range(n) if i not in gone]


def _result(
    procs: list[_Proc], spec: ConsortiumSpec, wall: float, survivors: list[int]
) -> MethodResult:
    """Curves over the surviving nodes; a node's last report for a round wins (restarts)."""
    per_round: dict[int, dict[int, tuple[float, float]]] = {}
    latencies: list[float] = []
    for proc in procs:
        if proc.index not in survivors:
            continue
        for event in proc.events:
            if event.get("event") != "round":
                continue
            latencies.append(float(event["latency_s"]))
            if event.get("accuracy") is not None:
                per_round.setdefault(int(event["round"]), {})[proc.index] = (
                    float(event["accuracy"]),
                    float(event["bytes_sent"]),
                )
    result = MethodResult("murmur")
    for r in sorted(per_round):
        got = per_round[r]
        if len(got) < len(survivors):
            continue
        accs = [a for a, _ in got.values()]
        result.rounds.append(r)
        result.accuracy_mean.append(float(np.mean(accs)))
        result.accuracy_min.append(float(np.min(accs)))
        result.bytes_per_node.append(float(np.mean([b for _, b in got.values()])))
    finals = [e for p in procs if p.index in survivors for e in p.events if e["event"] == "finish"]
    accs = [float(e["accuracy"]) for e in finals if e.get("accuracy") is not None]
    result.final = {
        "accuracy_mean": float(np.mean(accs)) if accs else None,
        "accuracy_min": float(np.min(accs)) if accs else None,
        "auc_mean": None,
        "bytes_per_node": float(np.mean([e["bytes_sent"] for e in finals])) if finals else 0.0,
        "rounds": spec.rounds,
        "wall_s": wall,
        "round_latency_median_s": float(np.median(latencies)) if latencies else None,
        "frames_rejected": sum(sum(e.get("rejected", {}).values()) for e in finals),
    }
    result.site_finals = {
        p.index: e
        for p in procs
        if p.index in survivors
        for e in p.events
        if e["event"] == "finish"
    }
    if spec.dp is not None:  # as the in-process simulator reports it
        result.final["eps_spent"] = max((float(e["eps_spent"]) for e in finals), default=None)
        result.final["dp_sites_spent"] = sum(bool(e["dp_budget_spent"]) for e in finals)
    return result

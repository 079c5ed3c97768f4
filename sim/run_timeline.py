"""What a process-backend run's ``timeline.jsonl`` says about each site, for the report.

:mod:`sim.process` merges every node's JSON-line log and the supervisor's ``killed`` /
``restarted`` events into one time-ordered file. A site that was killed and restarted
appears as two lives there (two ``start`` events); its counters of bytes sent survive the
restart (they are in its checkpoint), its counters of rejected frames do not, so the
rejected frames of a site are summed over its lives. Lines that are not whole JSON
objects (a log cut by a SIGKILL) are skipped, as the supervisor skips them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPERVISOR = ("killed", "restarted")


@dataclass(frozen=True)
class SiteStats:
    """One site's row of the report's per-site table."""

    node: int
    rounds_done: int
    last_latency_s: float | None
    bytes_sent: int
    rejected: int
    restarts: int
    finished: bool


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The whole events of ``path`` that name a node, in time order."""
    events = []
    for line in path.read_bytes().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("node"), int):
            events.append(event)
    return sorted(events, key=lambda e: float(e.get("t", 0.0)))


def cpu_s_per_round(events: list[dict[str, Any]], rounds: int) -> float:
    """The CPU seconds a node spent a round, mean over the nodes: each node's ``cpu_s``
    from its start to its finish event (one life each: a run without restarts)."""
    cpu = {e["node"]: -float(e["cpu_s"]) for e in events if e.get("event") == "start"}
    for e in events:
        if e.get("event") == "finish":
            cpu[e["node"]] += float(e["cpu_s"])
    return sum(cpu.values()) / len(cpu) / rounds


def _rejected_total(event: dict[str, Any]) -> int:
    counts = event.get("rejected")
    return sum(int(v) for v in counts.values()) if isinstance(counts, dict) else 0


def site_stats(events: list[dict[str, Any]]) -> list[SiteStats]:
    """Rounds done, last round's latency, bytes sent, rejected frames and restarts per node
    (every node that logged anything, in index order)."""
    rows = []
    for node in sorted({int(e["node"]) for e in events}):
        mine = [e for e in events if e["node"] == node]
        rounds = [e for e in mine if e.get("event") == "round"]
        counted = [e for e in mine if e.get("event") in ("round", "finish")]
        rejected, life = 0, 0
        for event in mine:
            if event.get("event") == "start":
                rejected, life = rejected + life, 0
            elif event.get("event") in ("round", "finish"):
                life = _rejected_total(event)
        done = [int(e["round"]) for e in counted if isinstance(e.get("round"), int)]
        rows.append(
            SiteStats(
                node=node,
                rounds_done=max(done, default=0),
                last_latency_s=float(rounds[-1]["latency_s"])
                if rounds and rounds[-1].get("latency_s") is not None
                else None,
                bytes_sent=int(counted[-1].get("bytes_sent", 0)) if counted else 0,
                rejected=rejected + life,
                restarts=sum(e.get("event") == "restarted" for e in mine),
                finished=any(e.get("event") == "finish" for e in mine),
            )
        )
    return rows


def supervisor_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The faults the supervisor injected (SIGKILLs) and its restarts, in time order."""
    return [e for e in events if e.get("event") in SUPERVISOR]


def _round_at(rounds: list[dict[str, Any]], t: float) -> int:
    """The last round a node had logged by time ``t`` (where a kill or restart is drawn)."""
    before = [int(e["round"]) for e in rounds if float(e["t"]) <= t]
    return before[-1] if before else 0


def _lives(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One node's round events, split where it started again."""
    lives: list[list[dict[str, Any]]] = [[]]
    for event in events:
        if event.get("event") == "start" and lives[-1]:
            lives.append([])
        elif event.get("event") == "round":
            lives[-1].append(event)
    return [life for life in lives if life]


def plot_timeline(events: list[dict[str, Any]], title: str) -> bytes:
    """A PNG of each node's round against wall time since the run's first event, with a
    mark where the supervisor killed a node and where it restarted it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((float(e.get("t", 0.0)) for e in events), default=0.0)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rounds: dict[int, list[dict[str, Any]]] = {}
    for node in sorted({int(e["node"]) for e in events}):
        lives = _lives([e for e in events if e["node"] == node])
        rounds[node] = [e for life in lives for e in life]
        for k, life in enumerate(lives):  # no line across the time the node was down
            ax.plot(
                [float(e["t"]) - t0 for e in life],
                [int(e["round"]) for e in life],
                ".-",
                color=colours[node % len(colours)],
                linewidth=1.2,
                label=None if k else f"node {node}",
            )
    for kind, marker, face in (("killed", "X", "black"), ("restarted", "^", "none")):
        hits = [e for e in events if e.get("event") == kind]
        if hits:
            ax.scatter(
                [float(e["t"]) - t0 for e in hits],
                [_round_at(rounds[int(e["node"])], float(e["t"])) for e in hits],
                marker=marker,
                s=90,
                facecolors=face,
                edgecolors="black",
                zorder=3,
                label=kind,
            )
    ax.set_xlabel("wall time since the first event (s)")
    ax.set_ylabel("round")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

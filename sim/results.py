"""What a simulation is asked to do, and what it reports of each method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node.gossip.step_guard import StepGuard
from node.training.dp_config import DpConfig
from node.training.trainer import TrainConfig
from sim.faults import FaultConfig

Tick = Callable[[], None]


@dataclass(frozen=True)
class RunSpec:
    """What every method of one simulation shares."""

    rounds: int
    model: str
    train: TrainConfig
    gamma: float | None  # None: node.gossip.step_size's γ per site, with its runtime guard
    seed: int
    device: torch.device
    eval_every: int = 1
    faults: FaultConfig = field(default_factory=FaultConfig)
    evaluate: bool = True  # False: time the rounds only (scale benchmarks)
    secure: str = "off"  # off, or a cipher name (ckks, plain): secure aggregation
    dp: DpConfig | None = None  # DP-SGD per site (and for central: on the pooled data)


@dataclass
class MethodResult:
    method: str
    rounds: list[int] = field(default_factory=list)
    accuracy_mean: list[float] = field(default_factory=list)
    accuracy_min: list[float] = field(default_factory=list)
    bytes_per_node: list[float] = field(default_factory=list)
    consensus: list[float] = field(default_factory=list)
    final: dict[str, float | int | None] = field(default_factory=dict)
    # the process backend: each surviving node's finish event, by node index
    site_finals: dict[int, dict[str, Any]] = field(default_factory=dict)


def step_summary(guard: StepGuard) -> dict[str, float]:
    """The consensus steps the sites ended with and how often they backed off."""
    return {
        "gamma_min": float(guard.gamma.min()),
        "gamma_max": float(guard.gamma.max()),
        "step_backoffs": int(guard.backoffs.sum()),
    }


def stability(result: MethodResult, trace: list[float]) -> dict[str, float]:
    """Consensus distance after round 1, at round 50, at its peak and at the end (from every
    round's value), and how far mean accuracy fell in the run's last half (:func:`late_drops`)."""
    if not trace:
        return {}
    out = {
        "consensus_first": trace[0],
        "consensus_50": trace[min(49, len(trace) - 1)],
        "consensus_max": max(trace),
        "consensus_end": trace[-1],
    }
    if result.accuracy_mean:
        out["accuracy_best"] = max(result.accuracy_mean)
        out.update(late_drops(result.rounds, result.accuracy_mean))
    return out


def late_drops(rounds: list[int], accuracy: list[float]) -> dict[str, float]:
    """How far mean accuracy fell in the run's last half: ``late_drop`` from the best it
    had reached by then (a fall: a model that got worse), ``below_best`` from the best of
    the whole run (also counts a curve still rising in the last half, i.e. slow, not
    unstable). A run that only ever improves has a late drop of 0."""
    half_from = rounds[-1] / 2
    running, drop, floor = float("-inf"), 0.0, float("inf")
    for r, a in zip(rounds, accuracy, strict=True):
        running = max(running, a)
        if r > half_from:
            drop = max(drop, running - a)
            floor = min(floor, a)
    if floor == float("inf"):  # one evaluation only
        floor = accuracy[-1]
    return {"late_drop": drop, "below_best": max(accuracy) - floor}

"""Seeded fault model on a virtual clock for the in-process simulator.

Time is virtual: a round starts at 0; node j finishes local training at
``compute_ms × slow_j`` and its frame to neighbour i arrives ``latency`` later, where
latency is ``delay_ms × Exp(1)``. The round closes at ``deadline_ms``: frames that are
dropped, late, or addressed to a crashed node miss it and stay in the sender's backlog.
A straggler whose compute alone exceeds the deadline works through several rounds: it
trains and sends only every ⌈compute × slow / deadline⌉ rounds, but keeps receiving.
A crashed node neither trains, sends nor receives from round A until it restarts at B,
from the state it had at the crash (its checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from sim.errors import SimError


@dataclass(frozen=True)
class Crash:
    node: int
    at: int
    restart: int | None  # None: never comes back


@dataclass(frozen=True)
class FaultConfig:
    drop: float = 0.0
    delay_ms: float = 0.0
    compute_ms: float = 100.0
    deadline_ms: float = 1000.0
    slow: dict[int, float] = field(default_factory=dict)
    crashes: tuple[Crash, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop < 1.0:
            raise SimError(f"--drop must be in [0, 1), got {self.drop}")
        if self.delay_ms < 0 or self.compute_ms <= 0 or self.deadline_ms <= 0:
            raise SimError("--delay must be >= 0; compute time and deadline must be > 0")
        for node, factor in self.slow.items():
            if factor < 1.0:
                raise SimError(f"--slow {node}:{factor}: the factor must be >= 1")

    @property
    def any(self) -> bool:
        return bool(self.drop or self.delay_ms or self.slow or self.crashes)


def parse_crash(text: str) -> Crash:
    """``NODE@AT`` (never restarts) or ``NODE@AT:RESTART``."""
    try:
        node_s, _, when = text.partition("@")
        at_s, _, back_s = when.partition(":")
        crash = Crash(int(node_s), int(at_s), int(back_s) if back_s else None)
    except ValueError:
        raise SimError(f"bad --kill {text!r}: expected NODE@ROUND or NODE@ROUND:RESTART") from None
    if crash.restart is not None and crash.restart <= crash.at:
        raise SimError(f"bad --kill {text!r}: the restart round must come after the crash")
    return crash


def parse_slow(text: str) -> tuple[int, float]:
    """``NODE:FACTOR``."""
    try:
        node_s, factor_s = text.split(":")
        return int(node_s), float(factor_s)
    except ValueError:
        raise SimError(f"bad --slow {text!r}: expected NODE:FACTOR, e.g. 3:4") from None


class FaultModel:
    """Decides, per round, who is up, who works, and which frames make the deadline."""

    def __init__(self, config: FaultConfig, n: int, seed: int) -> None:
        for crash in config.crashes:
            if not 0 <= crash.node < n:
                raise SimError(f"--kill names node {crash.node}, but nodes are 0..{n - 1}")
        for node in config.slow:
            if not 0 <= node < n:
                raise SimError(f"--slow names node {node}, but nodes are 0..{n - 1}")
        self.config = config
        self.n = n
        self.rng = np.random.default_rng(seed + 7_777)
        self.period = np.ones(n, dtype=np.int64)
        for node, factor in config.slow.items():
            self.period[node] = max(1, math.ceil(config.compute_ms * factor / config.deadline_ms))

    def alive(self, round: int) -> NDArray[np.bool_]:
        up = np.ones(self.n, dtype=bool)
        for crash in self.config.crashes:
            if round >= crash.at and (crash.restart is None or round < crash.restart):
                up[crash.node] = False
        return up

    def working(self, round: int, alive: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Nodes that finish training (and send) this round."""
        working: NDArray[np.bool_] = alive & (round % self.period == 0)
        return working

    def finish_ms(self) -> NDArray[np.float64]:
        slow = np.ones(self.n)
        for node, factor in self.config.slow.items():
            slow[node] = factor
        return np.minimum(self.config.compute_ms * slow, self.config.deadline_ms)

    def deliveries(
        self, src: NDArray[np.int64], dst: NDArray[np.int64], alive: NDArray[np.bool_]
    ) -> tuple[NDArray[np.bool_], float]:
        """Which frames (edge list src→dst) make this round's deadline, and the round length."""
        cfg = self.config
        e = len(src)
        ok = alive[dst].copy()
        if cfg.drop:
            ok &= self.rng.random(e) >= cfg.drop
        arrival = self.finish_ms()[src]
        if cfg.delay_ms:
            arrival = arrival + cfg.delay_ms * self.rng.exponential(1.0, e)
        ok &= arrival <= cfg.deadline_ms
        late = (~ok).any() or bool(self.config.slow)
        length = cfg.deadline_ms if late else float(arrival.max(initial=0.0))
        return ok, length

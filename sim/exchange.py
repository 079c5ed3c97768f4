"""The node's :class:`~node.exchange.base.Exchange`, vectorised over every simulated site.

A node runs one exchange per site, asynchronously; the in-process simulator runs all N
sites' sides of a round at once. The verbs and their order are the node's::

    q = C(x − x̂); x̂ += q; s += W_ii q          (the round, both)
    exchange.contribute(t, q, x̂, working)      node: exchange.contribute(t, q)
    traffic = exchange.send(t, alive)          node: await exchange.send(t)
    included = exchange.resolve(t, s)          node: await exchange.resolve(t)
    x += γ (s − x̂)

``included[i, j]`` says that neighbour j's part of round t is in s_i, the node's
``resolve`` result row by row. What a node waits for (``waiting_for``) is decided here by
the fault model at ``send``: a frame makes the deadline or it does not. ``finish`` is a
node's ``linger`` after its last round: what is still owed is delivered. The simulator
does not checkpoint, so ``snapshot``/``commit``/``restore`` have no counterpart; restarts
are the fault model's crashes. Two implementations, like the node's:
:class:`sim.network.SimNetwork` (plaintext backlogs) and
:class:`sim.secure_network.SecureSimNetwork` (CKKS sums through an aggregator).
:mod:`sim.conformance` runs both against real nodes and checks they agree.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from node.gossip.choco import ChocoState, add_self_contribution, fresh_columns, mix_step
from node.gossip.compress import Compressor
from node.gossip.sparse import Sparse
from node.gossip.step_guard import StepGuard, guarded_compress


@dataclass(frozen=True)
class Announced:
    """What each site's part of a round says of the validation stop
    (node.gossip.validation_stop): whether it has stopped, and its estimate (N, 2)."""

    stopped: NDArray[np.bool_]
    estimate: NDArray[np.float64]


@dataclass(frozen=True)
class Traffic:
    bytes_sent: NDArray[np.float64]  # (N,) this round, per sender
    missed: int
    round_ms: float


class BatchedExchange(ABC):
    """One protocol mode's side of a round, for all N sites at once."""

    n: int
    self_weight: torch.Tensor  # (N,) W_ii: the node adds its own part into s itself

    @abstractmethod
    def contribute(
        self,
        t: int,
        q: Sparse,
        xhat: torch.Tensor,
        working: NDArray[np.bool_],
        step: NDArray[np.float64] | None = None,
        validation: Announced | None = None,
    ) -> None:
        """Round ``t``'s parts: rows of ``q`` (already in ``xhat`` and in s) of the sites
        that are ``working``. ``step`` is each site's (stamp, smallest known consensus
        step), (N, 2), which a frame announces when it changed (node.gossip.step_size).
        ``validation``: what every part says of its sender's validation stop (None: it
        is off)."""

    @abstractmethod
    def send(self, t: int, alive: NDArray[np.bool_]) -> Traffic:
        """Put round ``t``'s frames on the (simulated) wire: which make the deadline, and
        the bytes a node would send for them."""

    @abstractmethod
    def resolve(self, t: int, s: torch.Tensor) -> NDArray[np.bool_]:
        """Close round ``t``: fold what arrived into ``s``; ``included[i, j]``."""

    def heard(self) -> NDArray[np.bool_]:
        """(N, N): ``[i, j]`` when neighbour j's frame of the last round reached i in time
        (its announcements with it); none in modes whose frames announce nothing."""
        return np.zeros((self.n, self.n), dtype=bool)

    def heard_tails(self) -> NDArray[np.float64] | None:
        """(N, SECURE_TAIL): the summed validation tails each site decrypted in the last
        round (node.exchange.secure.validation_tail); None where frames announce the
        stop in the clear instead."""
        return None

    def heard_steps(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) the smallest step each site's neighbours announced (inf for none)."""
        return torch.full_like(values, math.inf)

    @abstractmethod
    def finish(self, s: torch.Tensor) -> None:
        """After the last round: deliver what is still owed (a node's ``linger``)."""


class _Round(Protocol):
    t: int


R = TypeVar("R", bound=_Round)


def in_order(pending: R | None, t: int) -> R:
    """What ``contribute`` left for round ``t``: ``send`` and ``resolve`` follow it, once."""
    if pending is None or pending.t != t:
        raise RuntimeError(f"round {t}: contribute, send and resolve run in that order")
    return pending


def exchange_round(
    exchange: BatchedExchange,
    t: int,
    q: Sparse,
    state: ChocoState,
    working: NDArray[np.bool_],
    alive: NDArray[np.bool_],
    step: NDArray[np.float64] | None = None,
    validation: Announced | None = None,
) -> tuple[Traffic, NDArray[np.bool_]]:
    """contribute, send, resolve: round ``t`` of ``exchange`` on ``state``."""
    exchange.contribute(t, q, state.xhat, working, step, validation)
    traffic = exchange.send(t, alive)
    return traffic, exchange.resolve(t, state.s)


def gossip_round(
    exchange: BatchedExchange,
    t: int,
    state: ChocoState,
    compressor: Compressor,
    step: StepGuard | float,
    working: NDArray[np.bool_],
    alive: NDArray[np.bool_],
    active: torch.Tensor | None = None,
    validation: Announced | None = None,
) -> Traffic:
    """CHOCO's round after local training, for every site: compress, take one's own part
    into s, exchange, then mix with the fixed γ or the guard's per-site steps (which the
    frames announce and the guard agrees on, node.gossip.step_guard). Rows of sites that
    are not ``working`` (``active``: the same on the model's device) stay as they are.
    ``validation``: what each site's part says of the validation stop. The node's round
    is the same (node.learner)."""
    guard = step if isinstance(step, StepGuard) else None
    q = guarded_compress(state, compressor, t, active, guard)
    add_self_contribution(state, q, exchange.self_weight)
    announced = None
    if guard is not None:  # what this round's frames carry: (stamp, agreed)
        stamp, agreed = guard.announcement()
        announced = np.stack([np.full(exchange.n, float(stamp)), agreed.numpy()], 1)
    traffic, _ = exchange_round(exchange, t, q, state, working, alive, announced, validation)
    if guard is not None:
        guard.step(state, exchange.heard_steps)
    gamma = step.gamma.to(state.x.device) if isinstance(step, StepGuard) else step
    # Step 1 on the round's kept coordinates where the guard's γ was analysed for it: a γ
    # set by hand mixes every coordinate, as it was chosen for (node.gossip.choco.mix_step).
    fresh = fresh_columns(q) if guard is not None and guard.fresh else None
    mix_step(state, gamma, active, fresh)
    return traffic

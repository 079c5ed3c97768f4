"""The ``Exchange`` interface: what the round loop (:mod:`node.runtime`) needs from a mode.

A round ``t`` at a site, whichever mode exchanges its updates::

    q = C(x − x̂); x̂ += q; s += W_ii q           (the node, both modes)
    exchange.contribute(t, q)                   this site's part of round t
    checkpoint                                  write-ahead: what goes out is on disk
    await exchange.send(t)                      round t's frames to the neighbours
    ... exchange.handle(frame) as frames arrive (any time, from the receive loop)
    wait while exchange.waiting_for(t, …) is not empty, at most a deadline
    included = await exchange.resolve(t)        the neighbours whose part of t is in s
    x += γ (s − x̂)                              (the node)
    exchange.advance(t + 1)                     on to the next round (or further, caught up)
    checkpoint

Two implementations: :class:`node.exchange.plaintext.PlaintextExchange` (each neighbour's
compressed update, as backlog items on its link) and
:class:`node.exchange.secure_round.SecureRound` (one CKKS sum per neighbourhood, from an
aggregator). The node never reaches into either: what a mode needs of the node is the
:class:`Host` below, and what the node needs of a mode is this interface.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from crypto.identity import SiteIdentity
from node.errors import FrameError
from node.gossip.choco import ChocoState
from node.gossip.sparse import Sparse
from node.gossip.validation_stop import Heard
from node.state.links import Links
from node.state.membership import Membership
from node.wire.frames import Frame

SUSPECT_AFTER = 3  # rounds (plaintext) or deadlines (secure) of silence: taken to be down


class Host(Protocol):
    """What an exchange may use of its node: shared state it reads, and services it calls."""

    identity: SiteIdentity
    links: Links
    state: ChocoState
    incarnation: bytes
    round: int
    deadline_s: float
    last_frame: dict[str, float]  # event-loop time of each peer's last admitted frame
    stopping: asyncio.Event
    heard: asyncio.Event  # set whenever something arrives that a wait may be waiting for

    @property
    def training(self) -> bool:
        """Whether a worker thread is writing x and x̂ right now."""
        ...

    def emit(self, event: str, **fields: Any) -> None: ...

    def count_rejection(self, exc: FrameError, peer: str) -> None:
        """A frame refused after the receive loop admitted it (counted by reason)."""
        ...

    def supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]: ...

    async def send_body(self, peer: str, body: bytes) -> None: ...

    def save(self) -> None: ...

    def catch_up_target(self, t: int) -> int: ...

    def move_to(self, round: int) -> None:
        """Jump to ``round`` (restarted behind neighbours that kept going)."""
        ...


OutOfRange = Callable[[str, int], bool]


class Exchange(ABC):
    """One protocol mode's side of every round; see the module docstring for the order."""

    async def join(self) -> None:  # noqa: B027 (optional: plaintext has nothing to set up)
        """Before the first round (secure: exchange keys with every neighbour)."""

    @property
    @abstractmethod
    def peers(self) -> set[str]:
        """Every peer this site sends to (neighbours; two hops under secure aggregation)."""

    @abstractmethod
    def handle(self, frame: Frame) -> None:
        """Use one admitted frame; a FrameError leaves every state untouched."""

    def advance(self, round: int) -> None:  # noqa: B027 (optional: secure sums are per round)
        """This site has reached ``round``: everything before it is mixed."""

    @abstractmethod
    def contribute(self, t: int, q: Sparse) -> None:
        """This site's part of round ``t``: ``q`` is already in x̂ and in s."""

    @abstractmethod
    async def send(self, t: int) -> None:
        """Round ``t``'s frames to the neighbours (a slow one does not hold the round)."""

    @abstractmethod
    def suspected(self) -> set[str]:
        """Neighbours taken to be down, which no wait waits for."""

    @abstractmethod
    def waiting_for(self, t: int, suspected: set[str], out_of_range: OutOfRange) -> list[str]:
        """Neighbours whose part of round ``t`` has not arrived and may still come."""

    @abstractmethod
    async def resolve(self, t: int) -> set[str]:
        """Close round ``t``: the neighbours whose part of it is in s."""

    @abstractmethod
    async def linger(self, last: int, clock: int) -> bool:
        """One step after the last round: send what neighbours still need; whether this
        site still owes something (beyond neighbours that are behind, which the node
        checks)."""

    @abstractmethod
    def rewire(self, membership: Membership) -> None:
        """Before a new membership is applied (node.state.membership): forget per-link
        state it voids, or refuse it with a ConfigError."""

    def heard_steps(self, stamp: int) -> list[float]:
        """Consensus steps the neighbours announced for ``stamp`` (node.gossip.step_guard)."""
        return []

    @abstractmethod
    def heard_validation(self, t: int) -> Heard:
        """What the neighbours said of the validation stop in round ``t``, mixed
        (node.gossip.validation_stop): from their frames' announcements in plaintext mode,
        from the sums' encrypted tails under secure aggregation."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any] | None:
        """This mode's state for the checkpoint (read-only: saving changes nothing)."""

    def commit(self, saved: dict[str, Any] | None) -> None:  # noqa: B027 (optional)
        """``saved`` (this mode's last snapshot) is durably on disk: what it holds may now
        be announced to neighbours (acks, verdicts)."""

    @abstractmethod
    def restore(self, saved: dict[str, Any] | None) -> None: ...

    async def aclose(self) -> None:  # noqa: B027 (optional)
        """Stop background work (the node closes the transport after this)."""

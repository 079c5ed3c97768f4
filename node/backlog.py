"""Per-link backlog of unacknowledged contributions W_ij q_j.

A round closes at its deadline with whatever arrived. A contribution that did not make
it (dropped, late, receiver down) is not lost: the sender keeps it, numbered, and sends
it again with its next contribution until the receiver acknowledges it. The receiver
applies items strictly in sequence and ignores numbers it has already applied, so
duplicates and late copies can never be counted twice, and every s_i stays exact.

A *reset* item carries the sender's whole weighted public copy W_ij x̂_j, densely. It
supersedes everything before it on the link, so the sender drops its older pending items
and the receiver, which keeps the running total it has received on each link, replaces
that total instead of adding to it. Membership changes use it: a new link, or a link
whose weight changed, is resynchronised once and stays exact from then on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Item:
    """One contribution on one link: W_ij q_j as (indices or None for dense, values)."""

    seq: int
    indices: torch.Tensor | None
    values: torch.Tensor
    wire_bytes: float
    reset: bool = False


@dataclass
class OutboundLink:
    """Sender side of a link: numbered items not yet acknowledged by the receiver."""

    next_seq: int = 0
    pending: deque[Item] = field(default_factory=deque)

    def push(self, indices: torch.Tensor | None, values: torch.Tensor, wire_bytes: float) -> None:
        self.pending.append(Item(self.next_seq, indices, values, wire_bytes))
        self.next_seq += 1

    def reset(self, values: torch.Tensor) -> None:
        """Replace the backlog with one dense item that carries the whole weighted x̂."""
        self.pending.clear()
        self.pending.append(Item(self.next_seq, None, values, 4.0 * values.numel(), reset=True))
        self.next_seq += 1

    def frame(self) -> list[Item]:
        """Everything a frame on this link must carry now: the whole unacknowledged backlog."""
        return list(self.pending)

    def ack(self, upto: int) -> None:
        """The receiver has applied every item with seq <= ``upto``."""
        while self.pending and self.pending[0].seq <= upto:
            self.pending.popleft()

    @property
    def backlog_bytes(self) -> float:
        return sum(item.wire_bytes for item in self.pending)


@dataclass
class InboundLink:
    """Receiver side of a link: the highest sequence number applied so far and, when the
    link can be reset, the running total received on it (a length-d vector)."""

    applied: int = -1
    total: torch.Tensor | None = None

    def accept(self, items: list[Item], target: torch.Tensor) -> int:
        """Add the next items in sequence into ``target`` (length d); return the new ack."""
        for item in sorted(items, key=lambda it: it.seq):
            if item.reset and item.seq > self.applied:
                if self.total is None:
                    raise ValueError("a reset item arrived on a link that keeps no total")
                target.add_(item.values - self.total)
                self.total.copy_(item.values)
                self.applied = item.seq
                continue
            if item.seq != self.applied + 1:
                continue
            for vector in (target, self.total):
                if vector is None:
                    continue
                if item.indices is None:
                    vector.add_(item.values)
                else:
                    vector.index_add_(0, item.indices, item.values)
            self.applied = item.seq
        return self.applied

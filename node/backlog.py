"""Per-link backlog of unacknowledged contributions W_ij q_j.

A round closes at its deadline with whatever arrived. A contribution that did not make
it (dropped, late, receiver down) is not lost: the sender keeps it, numbered, and sends
it again with its next contribution until the receiver acknowledges it. The receiver
applies items strictly in sequence and ignores numbers it has already applied, so
duplicates and late copies can never be counted twice, and every s_i stays exact.
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


@dataclass
class OutboundLink:
    """Sender side of a link: numbered items not yet acknowledged by the receiver."""

    next_seq: int = 0
    pending: deque[Item] = field(default_factory=deque)

    def push(self, indices: torch.Tensor | None, values: torch.Tensor, wire_bytes: float) -> None:
        self.pending.append(Item(self.next_seq, indices, values, wire_bytes))
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
    """Receiver side of a link: the highest sequence number applied so far."""

    applied: int = -1

    def accept(self, items: list[Item], target: torch.Tensor) -> int:
        """Add the next items in sequence into ``target`` (length d); return the new ack."""
        for item in sorted(items, key=lambda it: it.seq):
            if item.seq != self.applied + 1:
                continue
            if item.indices is None:
                target.add_(item.values)
            else:
                target.index_add_(0, item.indices, item.values)
            self.applied = item.seq
        return self.applied

"""Per-link backlog of unacknowledged contributions W_ij q_j.

A round closes at its deadline with whatever arrived. A contribution that did not make
it (dropped, late, receiver down) is not lost: the sender keeps it, numbered, until the
receiver acknowledges it. The receiver applies items strictly in sequence and ignores
numbers it has already applied, so duplicates and late copies can never be counted
twice, and every s_i stays exact.

Each item is sent once. Acknowledgements ride on the receiver's own frames and cover
only what it has checkpointed, so the ack for round t's item comes with the receiver's
frame of round t + 1; an item still unacknowledged RESEND_AFTER rounds after it was sent
was lost, and then the whole backlog goes again from the oldest item (go-back-N: the
receiver applies in order only). A fault-free link therefore carries every item exactly
once, which is what the simulator counts.

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

RESEND_AFTER = 2


@dataclass(frozen=True)
class Item:
    """One contribution on one link: W_ij q_j as (indices or None for dense, values).

    ``shared_round`` marks indices drawn from that round's public seed: the codec sends
    the round, not the indices. ``quantum`` marks 8-bit values: each value is an integer
    level times ``quantum``, and the codec sends the levels as bytes.
    """

    seq: int
    indices: torch.Tensor | None
    values: torch.Tensor
    reset: bool = False
    shared_round: int | None = None
    quantum: float | None = None


@dataclass
class OutboundLink:
    """Sender side of a link: numbered items not yet acknowledged by the receiver."""

    next_seq: int = 0
    pending: deque[Item] = field(default_factory=deque)
    sent: dict[int, int] = field(default_factory=dict)  # seq → round it was last sent in

    def push(
        self,
        indices: torch.Tensor | None,
        values: torch.Tensor,
        shared_round: int | None = None,
        quantum: float | None = None,
    ) -> None:
        self.pending.append(Item(self.next_seq, indices, values, False, shared_round, quantum))
        self.next_seq += 1

    def reset(self, values: torch.Tensor) -> None:
        """Replace the backlog with one dense item that carries the whole weighted x̂."""
        self.pending.clear()
        self.sent.clear()
        self.pending.append(Item(self.next_seq, None, values, reset=True))
        self.next_seq += 1

    def frame(self, round: int) -> list[Item]:
        """What the frame of ``round`` carries: items never sent, or, once the oldest item
        has waited RESEND_AFTER rounds for its acknowledgement, the whole backlog."""
        if not self.pending:
            return []
        last = self.sent.get(self.pending[0].seq)
        if last is not None and round - last >= RESEND_AFTER:
            return list(self.pending)
        return [item for item in self.pending if item.seq not in self.sent]

    def mark_sent(self, items: list[Item], round: int) -> None:
        for item in items:
            self.sent[item.seq] = round

    def ack(self, upto: int) -> None:
        """The receiver has applied every item with seq <= ``upto``."""
        while self.pending and self.pending[0].seq <= upto:
            self.sent.pop(self.pending.popleft().seq, None)


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

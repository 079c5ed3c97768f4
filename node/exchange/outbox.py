"""What survives a missed round under secure aggregation: per-link copies and receipts.

In plaintext mode a missed contribution waits in the link's backlog and is sent again with
the next one. Under secure aggregation that cannot work as it is: round t's contribution
sits at the slots ``I_t`` of the public round seed, every contributor must fill the same
slots, and the next round's slots are others. So a contributor j keeps, for each receiver
i, a copy ``c_{j→i}`` of what i holds of ``x̂_j`` and contributes ``(x̂_j − c_{j→i})[I_t]``:
when nothing was ever missed that is exactly ``q_j[I_t]``; when round t was missed, the
difference stays in ``x̂_j − c_{j→i}`` and goes out the next time those slots come up
(error feedback per link), so ``s_i = W_ii x̂_i + Σ_j W_ij c_{j→i}`` stays exact.

``c`` is optimistic: a contribution counts as delivered until the receiver's receipt says
otherwise (:class:`Outbox`). The receiver resolves every round once, at its deadline, and
its receipts tell each neighbour which of its contributions were in a sum it decrypted;
they are resent until the neighbour acknowledges them, so a lost receipt only delays the
correction (:mod:`node.exchange.secure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Outbox:
    """Contributor side of one link: the receiver's copy of our x̂ and unresolved rounds."""

    copy: torch.Tensor
    pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def contribute(self, xhat: torch.Tensor, indices: torch.Tensor, round: int) -> torch.Tensor:
        """The unweighted contribution at ``indices`` for ``round``; counted as delivered."""
        values = xhat[indices] - self.copy[indices]
        self.copy[indices] = xhat[indices]
        self.pending[round] = (indices.clone(), values.clone())
        return values

    def resolve(self, round: int, included: bool) -> None:
        """The receiver's verdict on ``round``; a missed contribution returns to the residual.

        Idempotent: a verdict for a round already resolved (a resent receipt) does nothing.
        """
        entry = self.pending.pop(round, None)
        if entry is not None and not included:
            indices, values = entry
            self.copy.index_add_(0, indices, -values)

    def snapshot(self) -> dict[str, Any]:
        return {"copy": self.copy, "pending": {t: list(p) for t, p in self.pending.items()}}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> Outbox:
        pending = {int(t): (p[0].clone(), p[1].clone()) for t, p in saved["pending"].items()}
        return cls(saved["copy"].clone(), pending)

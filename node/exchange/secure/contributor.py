"""The contributor's part: this site's copy for each neighbour, encrypted to its aggregator.

For each neighbour r the site takes ``(x̂ − c_{→r})[I_t]`` from its outbox
(:mod:`node.exchange.outbox`), scales it by W_r,me, encrypts it under r's pinned public key
and sends it to r's aggregator of the round (never r itself): the first neighbour of r, in
the round's seeded order, that this site itself has no evidence of being down; r's own
claims about who is absent never enter that choice, so r cannot pick it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from node.exchange.secure.session import SecureSession
from node.exchange.secure.validation_tail import tail_values
from node.wire.sealed import pack


class Contributor(SecureSession):
    """See the module docstring."""

    def contribute(self, round: int, xhat: torch.Tensor) -> None:
        """Take this round's contributions into the outboxes (before the write-ahead save).
        None go to neighbours in ``absent``, to those whose key is not pinned yet, nor to a
        receiver with fewer than two live contributors: no sum for it could be opened, and
        what stays owed goes out once it can."""
        idx = self.indices(round)
        for r in self.neighbours:
            live = len(self.live_contributors(r)) >= 2
            if r not in self.absent and r in self.keys and live and self.knows_us(r):
                self.outbox[r].contribute(xhat, idx, round)

    async def send_contributions(self, round: int) -> None:
        """Each receiver's part, all at once (one slow aggregator delays only its own)."""
        await asyncio.gather(*(self._contribute_to(r, round) for r in self.neighbours))

    async def _contribute_to(self, r: str, round: int) -> None:
        entry = self.outbox[r].pending.get(round)
        base = self.bases.get(r)  # the outbox is replaced whenever this changes
        if entry is None or r not in self.keys or base is None:
            return
        # The model's values, then what we say of the validation stop (.validation_tail).
        part = np.concatenate([entry[1].double().numpy(), tail_values(self.announce())])
        values = part * self.weight[r]
        sealed = await asyncio.to_thread(self.cipher.encrypt, values, self.keys[r])
        body = pack({"to": r, "sealed": sealed.to_bytes(), "base": base})
        # A send that failed outright marks that aggregator down (for us) and the part
        # goes to the next one in the seeded order at once; every contributor whose send
        # fails does the same, so they meet at the same next aggregator. A send still
        # going after a deadline counts as sent: sent again elsewhere, it could land in
        # two sums, whose difference would open one contribution.
        while (agg := self.aggregator(r, round)) is not None:
            if self.outbox[r].pending.get(round) is not entry:
                return  # r's basis changed meanwhile: that part is void
            if agg == self.me:
                self._take(r, round, self.me, sealed, base)
                return
            if await self._send(agg, round, "contrib", body) is not False:
                return
            self.down[agg] = round

"""Keys, receipts and bases: what neighbours tell each other so that parts fit sums.

Before the first round, and whenever a neighbour's receipt shows it lacks our key, sites
exchange encryption keys (pinned on first sight; another key is refused until an operator
unpins it). Every receipt names the key held for the addressee, the sender's basis
(incarnation id and rebase epoch), the rounds it resolved and which of the addressee's
contributions were in them, whether it is ready and waiting for a round, and whom it
suspects is down. A new incarnation of a neighbour means it lost the copies our sum was
built from (we rebase); a new basis means its sum no longer holds our copy (ours goes back
to x̂₀).
"""

from __future__ import annotations

import asyncio
import math

from crypto.cipher import key_id_of
from crypto.errors import CryptoError
from node.errors import EarlyStopError, KeyPinError, SealedRejectedError, StaleFrameError
from node.exchange.outbox import Outbox
from node.exchange.secure.session import SecureSession
from node.wire.sealed import Receipt, basis, decode_receipt, pack
from node.wire.update import INCARNATION_BYTES, MAX_INCARNATIONS


class Join(SecureSession):
    """See the module docstring."""

    def unkeyed(self) -> list[str]:
        """Neighbours not yet keyed both ways: we lack their key, or their last receipt did
        not name ours or did not echo this life's id. Until all hold, contributions to or
        from them cannot flow."""
        return [p for p in self.neighbours if self._lacks_keys(p) or not self.knows_us(p)]

    def _lacks_keys(self, peer: str) -> bool:
        """We lack ``peer``'s key, or its last receipt does not name ours."""
        view = self.views.get(peer)
        return peer not in self.keys or view is None or view.key_id != self.secret.public.key_id

    def unacknowledged(self) -> list[str]:
        """Neighbours whose last receipt does not yet acknowledge our verdicts (``through``)."""
        return [
            p for p in self.neighbours if p not in self.views or self.views[p].ack < self.through
        ]

    def unready(self) -> list[str]:
        """Neighbours whose last receipt said they still lack keys with one of theirs; a
        round started before they are ready would get none of their contributions."""
        return [p for p in self.neighbours if p not in self.views or not self.views[p].ready]

    async def handshake(self, unkeyed: list[str]) -> None:
        """Send our key to those of ``unkeyed`` that lack it, and a receipt (naming the key
        we hold for each, our basis, and whether we are ready) to every neighbour. A
        missing echo alone needs only the receipt: our key is ~262 KB under CKKS."""
        for p in unkeyed:
            if self._lacks_keys(p):
                await self.send_key(p, self.round)
        await self.send_receipts(self.round)

    async def send_key(self, peer: str, round: int) -> None:
        body = pack({"cipher": self.cipher.name, "key": self.secret.public.data})
        await self._send(peer, round, "key", body)

    async def send_receipts(self, round: int, waiting: bool = False) -> None:
        """A receipt to every neighbour, all at once: one slow reader delays only its own
        (each waits at most a deadline, queue included)."""
        await asyncio.gather(
            *(
                self._send(p, round, "receipt", self._receipt(p, waiting, round))
                for p in self.neighbours
            )
        )

    def _receipt(self, peer: str, waiting: bool = False, round: int | None = None) -> bytes:
        """Our receipt for ``peer``, to be stamped with ``round`` (ours by default). It says
        we stopped only under a stamp from our first untrained round on (``stopped_by``): a
        stop decided at a round's end must not go out under that round's stamp, where it
        would reach the peer a round early; and never under a stamp before the first round
        any site can stop in, which the peer refuses, verdicts and all, as a false early
        stop."""
        stamp = self.round if round is None else round
        pinned = self.keys.get(peer)
        return pack(
            {
                "included": self.included[peer],
                "through": self.through,
                "ack": self.saved_processed[peer],
                "key": None if pinned is None else pinned.key_id,
                "absent": sorted(self.absent),
                "ready": self.started or not self.unkeyed(),
                "waiting": waiting,
                "base": basis(self.inc, self.saved_epoch),
                "echo": self.incs.get(peer),
                "stopped": self.stopped_by(stamp) and stamp + 1 >= self.earliest_stop,
            }
        )

    def _pin(self, peer: str, cipher: str, data: bytes) -> None:
        pinned = self.keys.get(peer)
        if pinned is not None:
            if pinned.key_id != key_id_of(data):
                raise KeyPinError(
                    f"{peer} presented an encryption key other than the one pinned for it; "
                    "refused (a site that rotated its key is accepted after `murmur keys "
                    "unpin --peer` here; see node.key_admin)"
                )
            return
        if cipher != self.cipher.name:
            raise SealedRejectedError(
                f"{peer} uses cipher {cipher!r}, this site {self.cipher.name!r}"
            )
        try:
            self.keys[peer] = self.cipher.public_key(data)
        except CryptoError as exc:
            raise SealedRejectedError(f"{peer}'s encryption key is unusable: {exc}") from None
        self.emit("key_pinned", peer=peer, key_id=key_id_of(data).hex())

    def _receipt_in(self, sender: str, round: int, payload: bytes) -> None:
        receipt = decode_receipt(payload)
        if receipt.stopped and round + 1 < self.earliest_stop:
            raise EarlyStopError(
                f"{sender} announced a stop in round {round + 1}, before round "
                f"{self.earliest_stop}, the first any site can stop in"
            )
        self._follow_basis(sender, round, receipt)
        if receipt.stopped:
            self.stopped_at[sender] = min(self.stopped_at.get(sender, round), round)
        outbox = self.outbox[sender]
        included = set(receipt.included)
        for t in sorted(outbox.pending):
            if t <= receipt.through:
                outbox.resolve(t, t in included)
        self.processed[sender] = max(self.processed[sender], receipt.through)
        self.included[sender] = [t for t in self.included[sender] if t > receipt.ack]
        self.views[sender] = receipt
        if receipt.waiting:
            self.seen[sender] = (round, asyncio.get_running_loop().time())
        for (receiver, _), buffer in self.buffers.items():
            if receiver == sender:
                buffer.changed.set()  # its flush time may have moved
        if receipt.key_id != self.secret.public.key_id:
            # Our key is ~262 KB under CKKS: a receipt naming another key id must not buy a
            # member that much of our upload each time; once a deadline is enough.
            now = asyncio.get_running_loop().time()
            if now - self._key_sent.get(sender, -math.inf) >= self.deadline_s:
                self._key_sent[sender] = now
                self._spawn(self.send_key(sender, self.round))

    def _follow_basis(self, sender: str, round: int, receipt: Receipt) -> None:
        """Before a receipt's verdicts: a new incarnation of ``sender`` means it lost the
        copies our sum was built from (we rebase); a new basis of ``sender`` means its sum
        no longer holds our copy (ours goes back to x̂₀). See the module docstring."""
        inc = receipt.base[:INCARNATION_BYTES]
        retired = self.retired.setdefault(sender, [])
        if inc in retired:
            raise StaleFrameError(f"receipt from a previous life of {sender}")
        known = self.incs.get(sender)
        if known is not None and known != inc:
            if len(retired) >= MAX_INCARNATIONS:
                raise StaleFrameError(f"{sender} changed its incarnation too often")
            retired.append(known)
            self.epoch += 1
            self.rebase_due = True
            self.sums.clear()  # made against our old basis
            self.processed[sender] = self.saved_processed[sender] = receipt.through
            self.included[sender] = []
            self.emit(
                "incarnation",
                peer=sender,
                round=round,
                detail="neighbour restarted without its checkpoint; sums rebased",
            )
        self.incs[sender] = inc
        old = self.bases.get(sender)
        if old is not None and old != receipt.base:
            if inc == old[:INCARNATION_BYTES] and receipt.base < old:
                raise StaleFrameError(f"receipt from {sender} names an earlier basis")
            self.outbox[sender] = Outbox(self.x0.clone())
        self.bases[sender] = receipt.base

"""The aggregator's part: add the ciphertexts for a receiver and forward one signed sum.

For each receiver whose seeded pick names this site: every contribution is parsed (and
added to an encryption of zero) in a worker thread before it joins the sum, so one bad
part cannot spoil it; the sum leaves once every expected neighbour has contributed, or
half a deadline after the receiver said (in its receipt) that it waits for the round, with
a signed contributor bitmap, and only if it holds at least two contributions.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from crypto.cipher import Sealed
from crypto.errors import CryptoError
from node.errors import ReplayedFrameError, SealedRejectedError, StaleFrameError
from node.exchange.plan import sign_contributors
from node.exchange.secure.session import Aggregation, SecureSession
from node.wire.sealed import pack


class Aggregator(SecureSession):
    """See the module docstring."""

    def _contribution(
        self, sender: str, round: int, receiver: str, data: bytes, base: bytes
    ) -> None:
        if receiver not in self.keys:
            raise SealedRejectedError(f"contribution for {receiver}, whose key this site lacks")
        if sender == receiver or sender not in self.neighbours_of(receiver):
            raise SealedRejectedError(f"{sender} is not a neighbour of {receiver}")
        buffer = self.buffers.get((receiver, round))
        if buffer is not None and buffer.flushed:
            raise StaleFrameError(f"contribution for {receiver} round {round} after its sum left")
        expected = self.bases.get(receiver) if buffer is None else buffer.base
        if base != expected:
            # Made against a basis the receiver has left (or not reached): in one sum with
            # current parts it would spoil all of them.
            raise StaleFrameError(f"contribution for {receiver} against another basis")
        part = (receiver, round, sender)
        if part in self._parts_taken or (buffer is not None and sender in buffer.parts):
            # One part per contributor, receiver and round: more would only park memory
            # and parse work here (an honest contributor sends one).
            raise ReplayedFrameError(f"a second contribution from {sender} for {receiver}")
        sealed = self._open(data, self.keys[receiver], round)
        self._parts_taken.add(part)
        task = asyncio.get_running_loop().create_task(
            self._check_contribution(sender, round, receiver, sealed, base)
        )
        self.supervise(task)
        pending = self.checking_parts.setdefault((receiver, round), set())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def _check_contribution(
        self, sender: str, round: int, receiver: str, sealed: Sealed, base: bytes
    ) -> None:
        """Parse every chunk before the part joins a sum: one bad part must not spoil it."""
        key = self.keys[receiver]
        try:
            # Added to an encryption of zero under the same key, as it will be to the
            # other parts: a part that parses but cannot be added (another scale inside
            # SEAL's body) is refused here instead of spoiling the sum.
            zero = self._zero(receiver, sealed.count)
            await asyncio.to_thread(self.cipher.add, [zero, sealed], key)
        except CryptoError as exc:
            self.on_reject(SealedRejectedError(f"contribution from {sender}: {exc}"), sender)
            return
        buffer = self.buffers.get((receiver, round))
        if buffer is not None and buffer.flushed:
            self.on_reject(StaleFrameError(f"contribution for {receiver} came late"), sender)
            return
        if buffer is not None and buffer.base != base:
            self.on_reject(StaleFrameError(f"contribution for {receiver}: old basis"), sender)
            return
        self._take(receiver, round, sender, sealed, base)

    def _zero(self, receiver: str, count: int) -> Sealed:
        """An encryption of ``count`` zeros under ``receiver``'s key, made once."""
        key = (receiver, count)
        if key not in self._zeros:
            self._zeros[key] = self.cipher.encrypt(np.zeros(count), self.keys[receiver])
        return self._zeros[key]

    def _take(self, receiver: str, round: int, sender: str, sealed: Sealed, base: bytes) -> None:
        key = (receiver, round)
        if key not in self.buffers:
            self.buffers[key] = Aggregation(asyncio.get_running_loop().time(), base)
            self._spawn(self._aggregate(receiver, round))
        buffer = self.buffers[key]
        if buffer.base != base:
            return  # our own part, made against a basis the others' parts have left
        buffer.parts.setdefault(sender, sealed)
        buffer.complete = self.live_contributors(receiver) <= set(buffer.parts)
        buffer.changed.set()

    def _flush_at(self, receiver: str, round: int, buffer: Aggregation) -> float:
        """When to forward a sum still missing contributions. The receiver waits a deadline
        from its own start of the round, which its receipt of that round announces, so the
        sum leaves half a deadline after that (receipts sent while joining or lingering
        do not count: the site is not waiting then). A receiver not there yet is not waiting, so
        its late contributors get two deadlines (it keeps early sums); one already past the
        round gets what there is now. Anchoring on the first contribution instead lets
        sites one round apart miss every round: each sum leaves just before the lagging
        contributor arrives."""
        at_round, at_time = self.seen.get(receiver, (-1, 0.0))
        if at_round > round:
            return 0.0
        if at_round == round:
            return at_time + self.deadline_s / 2
        return buffer.opened + 2 * self.deadline_s

    async def _aggregate(self, receiver: str, round: int) -> None:
        buffer = self.buffers[(receiver, round)]
        loop = asyncio.get_running_loop()
        while not buffer.complete:
            remaining = self._flush_at(receiver, round, buffer) - loop.time()
            if remaining <= 0:
                break
            buffer.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(buffer.changed.wait(), remaining)
        checks = self.checking_parts.pop((receiver, round), set())
        if checks:  # parts that arrived in time and are still being parsed join this sum
            await asyncio.gather(*checks, return_exceptions=True)
        buffer.flushed = True
        parts = dict(buffer.parts)
        buffer.parts.clear()
        if self.processed.get(receiver, -1) >= round:
            self.emit("sum_dropped", receiver=receiver, round=round, contributors=len(parts))
            return  # the receiver has closed the round; a sum now would only be refused
        if len(parts) < 2:
            self.emit("sum_withheld", receiver=receiver, round=round, contributors=len(parts))
            return
        try:
            total = await asyncio.to_thread(
                self.cipher.add, list(parts.values()), self.keys[receiver]
            )
        except CryptoError as exc:  # every part was parsed on receipt; this is a backstop
            self.emit("sum_failed", receiver=receiver, round=round, detail=str(exc))
            return
        data = total.to_bytes()
        record = sign_contributors(
            self.identity, receiver, round, parts, self.neighbours_of(receiver), data, buffer.base
        )
        await self._send(receiver, round, "sum", pack(record.sum_fields(data)))

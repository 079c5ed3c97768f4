"""The receiver's part: check the sums that arrive and add the disjoint ones into s.

A sum is decrypted as it arrives (off the event loop) and kept only if it names at least
two contributors, overlaps no sum already held, and decrypts to finite values within
``SUM_LIMIT``. At the deadline the receiver adds a disjoint set of them into s at the
round's indices (after a rebase, when a neighbour started over) and from then on tells
each neighbour, in its receipts, which of its contributions were in them.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from crypto.cipher import Sealed
from crypto.errors import BadSignatureError, CryptoError
from crypto.identity import public_key_from_peer_id
from node.errors import FrameError, ReplayedFrameError, SealedRejectedError, StaleFrameError
from node.exchange.plan import Contributors, disjoint_sums, verify_contributors
from node.exchange.secure.session import KEEP_ROUNDS, SUM_LIMIT, SecureSession
from node.exchange.secure.validation_tail import SECURE_TAIL
from node.wire.sealed import check_basis, unpack


class Receiver(SecureSession):
    """See the module docstring."""

    def _sum(self, sender: str, round: int, payload: bytes) -> None:
        fields = {"bitmap": int, "digest": bytes, "sig": bytes, "base": bytes, "sealed": bytes}
        raw = unpack(payload, "sum", fields)
        if round <= self.through:
            raise StaleFrameError(f"sum for round {round}, already resolved")
        if check_basis(raw["base"], "sum") != self.base:
            raise StaleFrameError(f"sum for round {round} made against a basis we have left")
        record = Contributors(
            self.me, round, raw["bitmap"], raw["digest"], raw["sig"], base=raw["base"]
        )
        try:
            verify_contributors(record, public_key_from_peer_id(sender), raw["sealed"])
            if raw["bitmap"] < 0 or not record.decryptable(self.neighbours):
                raise SealedRejectedError("a sum of fewer than two contributors is never opened")
        except (BadSignatureError, ValueError) as exc:
            raise SealedRejectedError(f"contributor record from {sender}: {exc}") from None
        if (sender, round) in self._sums_from:
            raise ReplayedFrameError(f"a second sum from {sender} for round {round}")
        if record.bitmap & self._bits.get(round, 0):
            # Two sums sharing a contributor: decrypting both would let us subtract one from
            # the other, so the later one is never opened (disjoint_sums does the same for
            # what we add; this is about what we see).
            raise SealedRejectedError(f"sum for round {round} overlaps one already held")
        held = self.sums.setdefault(round, [])
        checking = self.checking.setdefault(round, set())
        if len(held) + len(checking) >= len(self.neighbours):
            raise SealedRejectedError(f"more sums for round {round} than this site has neighbours")
        sealed = self._open(raw["sealed"], self.secret.public, round)
        self._sums_from.add((sender, round))
        self._bits[round] = self._bits.get(round, 0) | record.bitmap
        task = asyncio.get_running_loop().create_task(self._check_sum(sender, record, sealed))
        self.supervise(task)
        checking.add(task)
        task.add_done_callback(checking.discard)

    async def _check_sum(self, sender: str, record: Contributors, sealed: Sealed) -> None:
        """Decrypt a sum as it arrives (off the event loop) and keep it only if every value
        is finite and within SUM_LIMIT; see the module docstring."""
        try:
            values = await asyncio.to_thread(self.cipher.decrypt, sealed, self.secret)
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (sealed.count,):
                raise SealedRejectedError(f"sum decrypts to {values.shape}, not {sealed.count}")
            if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > SUM_LIMIT:
                raise SealedRejectedError(
                    f"sum from {sender} decrypts to values that are not finite or exceed "
                    f"{SUM_LIMIT:g}: forged"
                )
        except (FrameError, CryptoError, ValueError, RuntimeError) as exc:
            # TenSEAL raises ValueError/RuntimeError on a ciphertext it cannot decrypt
            # (e.g. "scale out of bounds"): the sender's fault, never our node's.
            error = exc if isinstance(exc, FrameError) else SealedRejectedError(str(exc))
            self.on_reject(error, sender)
            self.emit(
                "sum_opened",
                round=record.round,
                aggregator=sender,
                bitmap=record.bitmap,
                kept=False,
            )
            # a refused sum holds no contributor: an honest one naming them may still come
            self._bits[record.round] = self._bits.get(record.round, 0) & ~record.bitmap
            return
        kept = record.round > self.through and record.base == self.base
        self.emit(
            "sum_opened", round=record.round, aggregator=sender, bitmap=record.bitmap, kept=kept
        )
        if not kept:
            return  # resolved meanwhile without it, or we rebased meanwhile
        self.sums.setdefault(record.round, []).append((record, values))
        self.arrived()

    def _opened(self, record: Contributors, aggregator: str, kept: bool) -> None:
        """Every sum decrypted, kept or not, for the audit log (node.audit)."""
        bitmap, round = record.bitmap, record.round
        self.emit("sum_opened", round=round, aggregator=aggregator, bitmap=bitmap, kept=kept)

    def covered(self, round: int) -> set[str]:
        members: set[str] = set()
        for record, _ in self.sums.get(round, []):
            members.update(record.members(self.neighbours))
        return members

    async def resolve(self, round: int, s: torch.Tensor, xhat: torch.Tensor) -> set[str]:
        """Close ``round``: decrypt its disjoint sums into s; returns who was included.
        Called when no training thread writes ``xhat`` (our x̂), which a rebase reads."""
        pending = self.checking.pop(round, set())
        if pending:  # sums that arrived in time and are still being checked
            await asyncio.gather(*pending, return_exceptions=True)
        if self.rebase_due:
            others = sum(self.weight[p] for p in self.neighbours)
            with torch.no_grad():
                s.copy_(self.weight[self.me] * xhat + others * self.x0.to(s.dtype))
            self.rebase_due = False
        held = self.sums.pop(round, [])
        chosen = disjoint_sums([record.bitmap for record, _ in held])
        idx = self.indices(round)
        n = len(idx)
        included: set[str] = set()
        tail = np.zeros(SECURE_TAIL)
        with torch.no_grad():
            for k in chosen:
                record, values = held[k]
                s.index_add_(0, idx, torch.from_numpy(values[:n]).to(s.dtype))
                tail += values[n:]
                included.update(record.members(self.neighbours))
        self.tails[round] = tail
        for peer in included:
            self.included[peer].append(round)
        self.through = max(self.through, round)
        for t in [t for t in self.sums if t <= self.through]:
            del self.sums[t]
        for t in [t for t in self.tails if t < round - KEEP_ROUNDS]:
            del self.tails[t]
        for t in [t for t in self.checking if t <= self.through]:
            del self.checking[t]
        for key in [k for k in self.buffers if k[1] < round - KEEP_ROUNDS]:
            del self.buffers[key]
        for key in [k for k in self.checking_parts if k[1] < round - KEEP_ROUNDS]:
            del self.checking_parts[key]
        self._parts_taken = {k for k in self._parts_taken if k[1] >= round - KEEP_ROUNDS}
        self._sums_from = {k for k in self._sums_from if k[1] > self.through}
        self._bits = {t: b for t, b in self._bits.items() if t > self.through}
        return included

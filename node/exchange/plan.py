"""Pieces of secure neighbourhood aggregation that need no cipher: who aggregates for whom
in a round, and the signed record of whose contributions a forwarded sum contains.

For receiver i in round t the aggregator is a neighbour of i, never i, picked by a hash
of the public seed, the round and i: every site computes the same choice without talking.
When it is absent, the next one in the same seeded order takes over. The aggregator
forwards the sum with a *contributor bitmap* over i's sorted neighbours, signed by the
aggregator over (receiver, round, bitmap, hash of the sum): i learns whose terms the sum
holds, so it can acknowledge exactly those, and decrypts it only if the bitmap names at
least two contributors (a sum of one is that neighbour's update in the clear). The record
also names the receiver's *basis* the contributions were made against (its incarnation
and rebase epoch, :mod:`node.exchange.secure`), so a sum made against a basis the receiver
has left is never added to its running sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import msgpack

from crypto.errors import BadSignatureError
from crypto.identity import SiteIdentity, verify

MIN_CONTRIBUTORS = 2


def aggregator_order(receiver: str, neighbours: Sequence[str], round: int, seed: int) -> list[str]:
    """i's neighbours in the order they aggregate for i in ``round`` (first present wins)."""

    def rank(peer: str) -> bytes:
        return hashlib.sha256(f"{seed}|{round}|{receiver}|{peer}".encode()).digest()

    return sorted((p for p in neighbours if p != receiver), key=rank)


def pick_aggregator(
    receiver: str,
    neighbours: Sequence[str],
    round: int,
    seed: int,
    absent: Collection[str] = (),
) -> str | None:
    """The aggregator for ``receiver`` in ``round``, skipping ``absent`` neighbours."""
    for peer in aggregator_order(receiver, neighbours, round, seed):
        if peer not in absent:
            return peer
    return None


@dataclass(frozen=True)
class Contributors:
    """Which of the receiver's neighbours (sorted) a forwarded sum contains, signed."""

    receiver: str
    round: int
    bitmap: int
    sum_digest: bytes
    signature: bytes = b""
    base: bytes = b""  # the receiver's basis the contributions were made against

    def message(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                b"murmur-contributors-v2",
                self.receiver,
                self.round,
                self.bitmap,
                self.sum_digest,
                self.base,
            ]
        )
        return packed

    def sum_fields(self, sum_bytes: bytes) -> dict[str, int | bytes]:
        """The ``sum`` payload that forwards ``sum_bytes`` with this record
        (:mod:`node.wire.sealed`); one definition for node, simulator and tests."""
        return {
            "bitmap": self.bitmap,
            "digest": self.sum_digest,
            "sig": self.signature,
            "base": self.base,
            "sealed": sum_bytes,
        }

    def members(self, neighbours: Sequence[str]) -> list[str]:
        ordered = sorted(neighbours)
        if self.bitmap >> len(ordered):
            raise ValueError("contributor bitmap names more peers than the receiver has")
        return [p for k, p in enumerate(ordered) if self.bitmap >> k & 1]

    def decryptable(self, neighbours: Sequence[str]) -> bool:
        return len(self.members(neighbours)) >= MIN_CONTRIBUTORS


def sign_contributors(
    aggregator: SiteIdentity,
    receiver: str,
    round: int,
    contributors: Collection[str],
    neighbours: Sequence[str],
    sum_bytes: bytes,
    base: bytes = b"",
) -> Contributors:
    ordered = sorted(neighbours)
    unknown = set(contributors) - set(ordered)
    if unknown:
        raise ValueError(f"contributors {sorted(unknown)} are not neighbours of {receiver}")
    bitmap = sum(1 << ordered.index(p) for p in contributors)
    digest = hashlib.sha256(sum_bytes).digest()
    unsigned = Contributors(receiver, round, bitmap, digest, base=base)
    return replace(unsigned, signature=aggregator.sign(unsigned.message()))


def verify_contributors(record: Contributors, aggregator_key: bytes, sum_bytes: bytes) -> None:
    """Raise ``BadSignatureError`` unless the aggregator signed this bitmap for this sum."""
    if hashlib.sha256(sum_bytes).digest() != record.sum_digest:
        raise BadSignatureError("the forwarded sum is not the one the bitmap was signed for")
    verify(aggregator_key, record.message(), record.signature)


def disjoint_sums(bitmaps: Sequence[int]) -> list[int]:
    """Which forwarded sums of one round to decrypt: each of at least two contributors and
    no contributor in two of them (largest first).

    Two aggregators can each forward a sum for the same round when contributors disagreed
    on who was absent. Decrypting both is fine when they are disjoint (the receiver learns
    two sums, each of several neighbours); overlapping ones would let the receiver subtract
    one from the other, so only the first of them is opened.
    """
    chosen: list[int] = []
    taken = 0
    for k in sorted(range(len(bitmaps)), key=lambda k: -bin(bitmaps[k]).count("1")):
        bits = bitmaps[k]
        if bin(bits).count("1") >= MIN_CONTRIBUTORS and not bits & taken:
            chosen.append(k)
            taken |= bits
    return sorted(chosen)

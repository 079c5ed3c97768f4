"""Pairwise masks: a consortium's exact total of per-site vectors, no site's own vector.

Each pair of members (i, j) shares a key from X25519 on their site keys (an Ed25519 site
key converts to an X25519 one; the peer's public key is inside its peer ID), so no
message is needed to agree on it. From that key both draw the same pseudo-random vector
r_ij (BLAKE2b in counter mode, bound to a public session label); the smaller peer ID adds
it, the larger subtracts it. Every site publishes only its masked vector

    m_i = v_i + Σ_{j ≠ i} ± r_ij   (mod 2^128),

in which v_i is hidden unless every other member colludes; the masks cancel in Σ_i m_i,
which is exactly Σ_i v_i. Values are fixed-point integers (:data:`SCALE`), so the sum is
exact and the modulus wraps nothing an honest total reaches. Every member's masked
vector is needed: without one, the others' masks do not cancel and nothing is learned
(the total of fewer sites would need the dropped site's masks revealed, which this does
not do). One session label must be used once per vector: two different vectors masked
in the same session would reveal their difference.

This is Bonawitz et al.'s pairwise masking ("Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) without its dropout recovery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import nacl.bindings
import nacl.signing

from crypto.errors import CryptoError
from crypto.identity import SiteIdentity, public_key_from_peer_id

MODULUS_BITS = 128
MODULUS = 1 << MODULUS_BITS
WORD_BYTES = MODULUS_BITS // 8
SCALE = 1 << 24  # fixed point: 2^-24 ≈ 6e-8 absolute resolution per value
PERSON = b"murmur-mask/1"  # BLAKE2b personalisation: these masks and nothing else


def pair_key(identity: SiteIdentity, peer: str, session: bytes) -> bytes:
    """The key ``identity`` shares with ``peer`` for ``session`` (both derive the same)."""
    mine = nacl.signing.SigningKey(identity.seed).to_curve25519_private_key()
    theirs = nacl.signing.VerifyKey(public_key_from_peer_id(peer)).to_curve25519_public_key()
    shared = nacl.bindings.crypto_scalarmult(bytes(mine), bytes(theirs))
    low, high = sorted((identity.peer_id, peer))
    label = b"|".join((session, low.encode(), high.encode()))
    return hashlib.blake2b(label, key=shared, digest_size=32, person=PERSON).digest()


def mask_stream(key: bytes, length: int) -> list[int]:
    """``length`` words mod 2^128 drawn from ``key`` (BLAKE2b-512 in counter mode)."""
    words: list[int] = []
    counter = 0
    while len(words) < length:
        block = hashlib.blake2b(counter.to_bytes(8, "little"), key=key, person=PERSON).digest()
        for start in range(0, len(block), WORD_BYTES):
            words.append(int.from_bytes(block[start : start + WORD_BYTES], "little"))
        counter += 1
    return words[:length]


def encode_fixed(values: Sequence[float]) -> list[int]:
    """Reals as fixed-point words mod 2^128 (negative values wrap, as in two's complement)."""
    out = []
    for value in values:
        word = round(float(value) * SCALE)
        if abs(word) >= MODULUS // 2:
            raise CryptoError(f"{value!r} is too large for a {MODULUS_BITS}-bit masked sum")
        out.append(word % MODULUS)
    return out


def decode_fixed(words: Sequence[int]) -> list[float]:
    return [((w - MODULUS) if w >= MODULUS // 2 else w) / SCALE for w in words]


def masked(
    identity: SiteIdentity, members: Sequence[str], session: bytes, values: Sequence[float]
) -> list[int]:
    """This site's fixed-point ``values`` plus its pairwise masks with every other member."""
    me = identity.peer_id
    if me not in members:
        raise CryptoError("this site is not among the members it masks for")
    out = encode_fixed(values)
    for peer in members:
        if peer == me:
            continue
        sign = 1 if me < peer else -1
        stream = mask_stream(pair_key(identity, peer, session), len(out))
        out = [(w + sign * r) % MODULUS for w, r in zip(out, stream, strict=True)]
    return out


def unmasked_total(vectors: Sequence[Sequence[int]]) -> list[float]:
    """Σ of every member's masked vector: the masks cancel, the values' sum remains."""
    if not vectors:
        raise CryptoError("no masked vectors to add")
    total = [0] * len(vectors[0])
    for vector in vectors:
        if len(vector) != len(total):
            raise CryptoError("masked vectors of different lengths")
        total = [(a + b) % MODULUS for a, b in zip(total, vector, strict=True)]
    return decode_fixed(total)


def to_bytes(words: Sequence[int]) -> bytes:
    return b"".join(w.to_bytes(WORD_BYTES, "little") for w in words)


def from_bytes(data: bytes) -> list[int]:
    if len(data) % WORD_BYTES:
        raise CryptoError(f"a masked vector is whole {WORD_BYTES}-byte words")
    return [
        int.from_bytes(data[i : i + WORD_BYTES], "little") for i in range(0, len(data), WORD_BYTES)
    ]

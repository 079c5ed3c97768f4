"""Payloads of the four secure-aggregation frame topics, validated before use.

- ``key``: ``{"cipher": name, "key": public key bytes}``, a site's encryption key, sent to
  each neighbour; the frame signature binds it to the sender's peer ID, and the receiver
  pins it.
- ``contrib``: ``{"to": receiver, "sealed": envelope, "base": basis}``, one contribution
  for ``to`` in the frame's round, made against ``to``'s basis, sent to that round's
  aggregator.
- ``sum``: ``{"bitmap": int, "digest": bytes, "sig": bytes, "base": basis, "sealed":
  envelope}``, the aggregator's forwarded sum and its signed contributor record.
- ``receipt``: ``{"included": [rounds], "through": r, "ack": r, "key": key id | nil,
  "absent": [peers], "ready": bool, "waiting": bool, "base": basis, "echo": id | nil,
  "stopped": bool}``,
  each round to each neighbour; ``base`` is the sender's basis (its incarnation id and
  rebase epoch, :mod:`node.exchange.secure`), ``echo`` the addressee's incarnation id as
  the sender knows it; and
  which of its contributions up to round ``through`` reached a decrypted sum, how far we
  have processed its receipts, the key id we pinned for it, the neighbours we currently
  consider down, whether we hold keys both ways with all our neighbours (sites start
  their first round only once their neighbours are ready too), and whether we now wait
  for the frame's round (its aggregators time partial sums by that), and whether the
  sender has stopped training under the consortium's validation stop (signed and in the
  clear, as plaintext frames announce it, so a stop is the sender's own and is refused
  and counted when it comes before any honest site can stop).

Ciphertext bytes stay opaque here; ``crypto.cipher.open_envelope`` checks them later
against the receiver's key and the round's value count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from murmur import bounded_msgpack
from node.errors import MalformedFrameError
from node.wire.update import INCARNATION_BYTES

SECURE_TOPICS = ("key", "contrib", "sum", "receipt")
MAX_LIST = 4096
BASE_BYTES = INCARNATION_BYTES + 4  # incarnation id, then the rebase epoch (big-endian)


def basis(incarnation: bytes, epoch: int) -> bytes:
    """A receiver's basis: its incarnation id and how often it has rebased its sum."""
    return incarnation + epoch.to_bytes(4, "big")


def check_basis(value: bytes, topic: str) -> bytes:
    if len(value) != BASE_BYTES:
        raise MalformedFrameError(f"{topic} basis must be {BASE_BYTES} bytes")
    return value


@dataclass(frozen=True)
class Receipt:
    included: list[int]
    through: int
    ack: int
    key_id: bytes | None
    absent: list[str]
    ready: bool
    waiting: bool
    base: bytes = bytes(BASE_BYTES)
    echo: bytes | None = None
    stopped: bool = False


def pack(fields: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(fields)
    return out


Fields = Mapping[str, type | tuple[type, ...]]


def unpack(payload: bytes, topic: str, fields: Fields) -> dict[str, Any]:
    """Unpack a map with exactly ``fields`` of exactly these types (bool is not an int)."""
    raw = bounded_msgpack.unpack(
        payload, MalformedFrameError, f"{topic} payload", max_array_len=MAX_LIST, max_map_len=16
    )
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise MalformedFrameError(f"{topic} payload needs exactly {', '.join(sorted(fields))}")
    for name, kind in fields.items():
        value = raw[name]
        if isinstance(value, bool) and kind is not bool:
            raise MalformedFrameError(f"{topic} field {name!r} has the wrong type")
        if not isinstance(value, kind):
            raise MalformedFrameError(f"{topic} field {name!r} has the wrong type")
    return raw


def _rounds(values: list[Any], topic: str) -> list[int]:
    if not all(type(v) is int and v >= 0 for v in values):
        raise MalformedFrameError(f"{topic} rounds must be non-negative integers")
    return [int(v) for v in values]


def decode_receipt(payload: bytes) -> Receipt:
    raw = unpack(
        payload,
        "receipt",
        {
            "included": list,
            "through": int,
            "ack": int,
            "key": (bytes, type(None)),
            "absent": list,
            "ready": bool,
            "waiting": bool,
            "base": bytes,
            "echo": (bytes, type(None)),
            "stopped": bool,
        },
    )
    if raw["through"] < -1 or raw["ack"] < -1:
        raise MalformedFrameError("receipt through and ack must be ≥ -1")
    check_basis(raw["base"], "receipt")
    if raw["echo"] is not None and len(raw["echo"]) != INCARNATION_BYTES:
        raise MalformedFrameError(f"receipt echo must be {INCARNATION_BYTES} bytes")
    if not all(isinstance(p, str) for p in raw["absent"]):
        raise MalformedFrameError("receipt absent must list peer IDs")
    included = _rounds(raw["included"], "receipt")
    return Receipt(
        included,
        raw["through"],
        raw["ack"],
        raw["key"],
        list(raw["absent"]),
        raw["ready"],
        raw["waiting"],
        raw["base"],
        raw["echo"],
        raw["stopped"],
    )

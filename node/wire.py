"""The payload of an ``update`` frame: backlog items for one link plus an acknowledgement.

``{"dim": d, "ack": n, "items": [[seq, indices | nil, values, reset], ...]}`` with indices
as little-endian int32 bytes, values as little-endian float32 bytes and ``reset`` true for
a dense item that replaces the link's total (:mod:`node.backlog`). Everything is
validated (types, lengths, index range, finite values) before a single value is applied,
so a bad payload changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from node.backlog import Item
from node.errors import MalformedFrameError

MAX_ITEMS = 4096


@dataclass(frozen=True)
class Update:
    dim: int
    ack: int
    items: list[Item]


def encode_update(dim: int, ack: int, items: list[Item]) -> bytes:
    packed = []
    for item in items:
        idx = None if item.indices is None else item.indices.to(torch.int32).numpy().tobytes()
        values = item.values.to(torch.float32).numpy().tobytes()
        packed.append([item.seq, idx, values, item.reset])
    out: bytes = msgpack.packb({"dim": dim, "ack": ack, "items": packed})
    return out


def decode_update(payload: bytes, dim: int) -> Update:
    """Parse and validate an update for a model of ``dim`` parameters."""
    try:
        msg = msgpack.unpackb(
            payload, raw=False, max_array_len=MAX_ITEMS, max_map_len=8, max_ext_len=0
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedFrameError(f"update payload is not msgpack: {type(exc).__name__}") from None
    if not isinstance(msg, dict) or set(msg) != {"dim", "ack", "items"}:
        raise MalformedFrameError("update payload needs exactly dim, ack and items")
    if type(msg["dim"]) is not int or msg["dim"] != dim:
        raise MalformedFrameError(f"update for a {msg['dim']}-parameter model; ours has {dim}")
    ack = msg["ack"]
    if not isinstance(ack, int) or isinstance(ack, bool) or ack < -1:
        raise MalformedFrameError("ack must be an integer ≥ -1")
    if not isinstance(msg["items"], list):
        raise MalformedFrameError("items must be a list")
    items = [_item(raw, dim) for raw in msg["items"]]
    return Update(dim, ack, items)


def _item(raw: object, dim: int) -> Item:
    if not isinstance(raw, list) or len(raw) != 4:
        raise MalformedFrameError("an item is [seq, indices, values, reset]")
    seq, idx_bytes, value_bytes, reset = raw
    if not isinstance(reset, bool) or (reset and idx_bytes is not None):
        raise MalformedFrameError("item reset must be a boolean, and reset items are dense")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MalformedFrameError("item seq must be a non-negative integer")
    if not isinstance(value_bytes, bytes) or len(value_bytes) % 4:
        raise MalformedFrameError("item values must be float32 bytes")
    values = np.frombuffer(value_bytes, dtype="<f4")
    if not np.isfinite(values).all():
        raise MalformedFrameError("item values must be finite")
    indices: torch.Tensor | None
    if idx_bytes is None:
        if len(values) != dim:
            raise MalformedFrameError(f"a dense item has {dim} values, got {len(values)}")
        indices = None
    else:
        if not isinstance(idx_bytes, bytes) or len(idx_bytes) != 4 * len(values):
            raise MalformedFrameError("item indices must be one int32 per value")
        idx = np.frombuffer(idx_bytes, dtype="<i4")
        if len(idx) and (idx.min() < 0 or idx.max() >= dim):
            raise MalformedFrameError(f"item indices outside [0, {dim})")
        indices = torch.from_numpy(idx.astype(np.int64))
    tensor = torch.from_numpy(values.copy())
    return Item(seq, indices, tensor, float(len(value_bytes) + len(idx_bytes or b"")), reset)

"""The payload of an ``update`` frame — backlog items for one link plus an acknowledgement —
and its exact size, the one source of the byte counts a node and both simulators report.

``{"dim": d, "ack": n, "inc": [sender, echo], "items": [[seq, index, values, reset], ...]}``
where ``inc`` holds the sender's incarnation id and the receiver's as the sender last
heard it (8 bytes each; :mod:`node.state.links`: a changed incarnation resets the link, and an
ack counts only for the incarnation it echoes), and ``index`` is
nil for a dense item, the gap-coded explicit indices (top-k: see below), or the
round whose public seed drew a shared index set (rand-k, block-k: the receiver draws the
same set, so no index is sent); ``values`` is float32 little-endian bytes, or for 8-bit
quantized items ``[quantum, levels]`` with one float32 quantum and one signed byte a
value. ``reset`` is true for a dense item that replaces the link's total
(:mod:`node.state.backlog`). Everything is validated (types, lengths, index range, rounds,
finite values) before a single value is applied, so a bad payload changes nothing.

Explicit indices go out in increasing order (values in the same order) as gaps: one byte
naming the width w ∈ {1, 2, 4}, then ``g_0 = i_0`` and ``g_k = i_k − i_{k−1} − 1`` as
unsigned little-endian integers of w bytes, w the narrowest that holds every gap. Top-k
of 10% keeps a value every ten coordinates on average, so its indices cost about one
byte each instead of an int32's four (on the 1,058-parameter demo model a frame of 106
values shrinks from ~720 to ~400 bytes); the order carries no information a receiver
could not read from the int32 form, and strictly increasing indices rule out duplicates.

:func:`payload_size` and :func:`item_size` give the encoded length without encoding;
``tests/test_wire.py`` pins them to ``len(encode_update(...))``.

Two optional entries announce the sender's gossiped control values: ``step`` its
(stamp, consensus step) when it changed (:mod:`node.gossip.step_guard`), and ``val`` its
tracked estimate of the consortium's validation loss, two float32 (sum, rows), or empty
bytes once it has stopped training (:mod:`node.gossip.validation_stop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import torch
from numpy.typing import NDArray

from murmur import bounded_msgpack
from node.errors import MalformedFrameError
from node.gossip.sparse import Sparse
from node.state.backlog import Item
from node.wire.msgsize import BOOL, NIL, N, array_header, bin_size, int_size, map_header, str_size

MAX_ITEMS = 4096
# Shared-index items a frame may carry: each names a round whose index set the receiver
# draws (a permutation of the model's d parameters, cached for the last 64 rounds), so a
# member naming 4,096 different rounds in one frame would cost 4,096 draws. Honest frames
# carry one; a resent backlog longer than this goes over several rounds.
MAX_SHARED_ITEMS = 64
LEVELS = 127
INCARNATION_BYTES = 8
NO_INCARNATION = bytes(INCARNATION_BYTES)  # "not heard from you yet"
# A real site restarts from nothing rarely; a neighbour that changes its id more often
# than this is refused (each change costs its neighbours a reset).
MAX_INCARNATIONS = 16

SharedIndices = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class Update:
    dim: int
    ack: int
    items: list[Item]
    step: tuple[int, float] | None = None  # sender's (stamp, γ) when changed (step_size)
    inc: bytes = NO_INCARNATION  # the sender's incarnation id
    echo: bytes = NO_INCARNATION  # ours, as the sender last heard it (its ack is for it)
    val: Validation | None = None  # the sender's validation-stop announcement, if any


@dataclass(frozen=True)
class Validation:
    """A site's validation-stop announcement: its tracked (loss sum, rows) estimate of the
    consortium's validation loss, or ``None`` once it has stopped training."""

    estimate: tuple[float, float] | None


VALIDATION_BYTES = 8  # two float32


INDEX_WIDTHS = (1, 2, 4)


def index_width(largest_gap: N) -> N:
    """Bytes per gap of a gap-coded index set whose largest gap is ``largest_gap``."""
    if isinstance(largest_gap, np.ndarray):
        return np.where(largest_gap < 256, 1, np.where(largest_gap < 65536, 2, 4)).astype(np.int64)
    return 1 if largest_gap < 256 else 2 if largest_gap < 65536 else 4


def index_gaps(sorted_indices: NDArray[np.int64]) -> NDArray[np.int64]:
    """``g_0 = i_0``, ``g_k = i_k − i_{k−1} − 1`` of increasing indices (along the last axis)."""
    gaps = np.diff(sorted_indices, axis=-1, prepend=-1) - 1
    return np.asarray(gaps, dtype=np.int64)


SortedGaps = tuple[NDArray[np.int64], NDArray[np.int64], int]  # order, gaps, width


def _sorted_gaps(item: Item) -> SortedGaps:
    """An explicit item's sorting permutation, its gaps and their width: what the encoder
    writes and :func:`encoded_item_size` counts, from one rule."""
    assert item.indices is not None
    idx = item.indices.to("cpu", torch.int64).numpy()
    order = np.argsort(idx, kind="stable")
    gaps = index_gaps(idx[order])
    return order, gaps, index_width(int(gaps.max()) if len(gaps) else 0)


def _index_field(item: Item, explicit: SortedGaps | None) -> bytes | int | None:
    if item.indices is None:
        return None
    if item.shared_round is not None:
        return item.shared_round
    assert explicit is not None
    _, gaps, width = explicit
    if len(gaps) and (gaps.min() < 0 or gaps.max() >= 2**32):  # a compressor's bug, not a peer's
        raise ValueError("explicit indices must be distinct and below 2**32")
    return bytes([width]) + gaps.astype(f"<u{width}").tobytes()


def _values_field(item: Item, order: NDArray[np.int64] | None) -> bytes | list[bytes]:
    values = item.values.detach().to("cpu", torch.float32)
    if order is not None:
        values = values[torch.from_numpy(order)]
    if item.quantum is None:
        return values.numpy().astype("<f4").tobytes()
    levels = torch.round(values / item.quantum).clamp_(-LEVELS, LEVELS).to(torch.int8)
    return [np.float32(item.quantum).astype("<f4").tobytes(), levels.numpy().tobytes()]


def encode_update(
    dim: int,
    ack: int,
    items: list[Item],
    step: tuple[int, float] | None = None,
    inc: tuple[bytes, bytes] = (NO_INCARNATION, NO_INCARNATION),
    val: Validation | None = None,
) -> bytes:
    packed = []
    for i in items:
        explicit = _sorted_gaps(i) if index_kind(i) == "explicit" else None
        order = None if explicit is None else explicit[0]
        packed.append([i.seq, _index_field(i, explicit), _values_field(i, order), i.reset])
    fields: dict[str, object] = {"dim": dim, "ack": ack, "inc": list(inc), "items": packed}
    if step is not None:
        fields["step"] = [int(step[0]), float(step[1])]
    if val is not None:
        fields["val"] = b"" if val.estimate is None else np.asarray(val.estimate, "<f4").tobytes()
    out: bytes = msgpack.packb(fields)
    return out


def decode_update(
    payload: bytes,
    dim: int,
    shared_indices: SharedIndices | None = None,
    max_round: int | None = None,
) -> Update:
    """Parse and validate an update for a model of ``dim`` parameters. Items with shared
    indices get them from ``shared_indices(round)``; their round may not pass
    ``max_round`` (the frame's own, signed round)."""
    msg = bounded_msgpack.unpack(
        payload, MalformedFrameError, "update payload", max_array_len=MAX_ITEMS, max_map_len=8
    )
    if not isinstance(msg, dict) or set(msg) - {"step", "val"} != {"dim", "ack", "inc", "items"}:
        raise MalformedFrameError(
            "update payload needs exactly dim, ack, inc, items (and step, val)"
        )
    inc = msg["inc"]
    if (
        not isinstance(inc, list)
        or len(inc) != 2
        or not all(isinstance(v, bytes) and len(v) == INCARNATION_BYTES for v in inc)
    ):
        raise MalformedFrameError("update inc must be two 8-byte incarnation ids")
    if type(msg["dim"]) is not int or msg["dim"] != dim:
        raise MalformedFrameError(f"update for a {msg['dim']}-parameter model; ours has {dim}")
    ack = msg["ack"]
    if not isinstance(ack, int) or isinstance(ack, bool) or ack < -1:
        raise MalformedFrameError("ack must be an integer ≥ -1")
    if not isinstance(msg["items"], list):
        raise MalformedFrameError("items must be a list")
    step = msg.get("step")
    if step is not None:
        if (
            not isinstance(step, list)
            or len(step) != 2
            or type(step[0]) is not int
            or not 0 <= step[0] < 2**32
            or type(step[1]) is not float
            or not 0.0 <= step[1] <= 1.0
        ):
            raise MalformedFrameError("update step must be [stamp, γ in [0, 1]]")
        step = (step[0], step[1])
    val = _validation(msg["val"]) if "val" in msg else None
    shared = sum(1 for raw in msg["items"] if isinstance(raw, list) and _names_round(raw))
    if shared > MAX_SHARED_ITEMS:
        raise MalformedFrameError(
            f"{shared} shared-index items in one frame; at most {MAX_SHARED_ITEMS}"
        )
    items = [_item(raw, dim, shared_indices, max_round) for raw in msg["items"]]
    return Update(dim, ack, items, step, inc[0], inc[1], val)


def _validation(raw: object) -> Validation:
    """``val``: empty (stopped) or two finite float32, neither negative (a loss sum and a
    row count, each a convex mix of the sites' own)."""
    if not isinstance(raw, bytes) or len(raw) not in (0, VALIDATION_BYTES):
        raise MalformedFrameError(f"update val must be 0 or {VALIDATION_BYTES} bytes")
    if not raw:
        return Validation(None)
    total, rows = (float(v) for v in np.frombuffer(raw, "<f4"))
    if not (np.isfinite(total) and np.isfinite(rows)) or total < 0.0 or rows < 0.0:
        raise MalformedFrameError("update val must be two finite float32 ≥ 0")
    return Validation((total, rows))


def _names_round(raw: list[Any]) -> bool:
    """Whether an item (as msgpack gave it) names a shared-index round."""
    index = raw[1] if len(raw) > 1 else None
    return isinstance(index, int) and not isinstance(index, bool)


def _values(raw: object) -> tuple[np.ndarray, float | None]:
    if isinstance(raw, bytes):
        if len(raw) % 4:
            raise MalformedFrameError("item values must be float32 bytes")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32), None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not isinstance(raw[0], bytes)
        or len(raw[0]) != 4
        or not isinstance(raw[1], bytes)
    ):
        raise MalformedFrameError("8-bit item values are [float32 quantum, int8 levels]")
    quantum = float(np.frombuffer(raw[0], dtype="<f4")[0])
    if not np.isfinite(quantum) or quantum < 0:
        raise MalformedFrameError("8-bit item quantum must be finite and non-negative")
    levels = np.frombuffer(raw[1], dtype=np.int8)
    if len(levels) and int(levels.min()) < -LEVELS:
        raise MalformedFrameError(f"8-bit item levels lie in [-{LEVELS}, {LEVELS}]")
    q = np.float32(quantum)
    return levels.astype(np.float32) * q, quantum


def _item(
    raw: object, dim: int, shared_indices: SharedIndices | None, max_round: int | None
) -> Item:
    if not isinstance(raw, list) or len(raw) != 4:
        raise MalformedFrameError("an item is [seq, index, values, reset]")
    seq, index, value_field, reset = raw
    if not isinstance(reset, bool) or (reset and index is not None):
        raise MalformedFrameError("item reset must be a boolean, and reset items are dense")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MalformedFrameError("item seq must be a non-negative integer")
    values, quantum = _values(value_field)
    if reset and quantum is not None:
        raise MalformedFrameError("reset items carry float32 values")
    if not np.isfinite(values).all():
        raise MalformedFrameError("item values must be finite")
    indices: torch.Tensor | None
    shared_round: int | None = None
    if index is None:
        if len(values) != dim:
            raise MalformedFrameError(f"a dense item has {dim} values, got {len(values)}")
        indices = None
    elif _names_round(raw):
        if shared_indices is None:
            raise MalformedFrameError("a shared-index item, but our compressor draws none")
        if index < 0 or (max_round is not None and index > max_round):
            raise MalformedFrameError(f"shared-index round {index} outside [0, {max_round}]")
        indices = shared_indices(index)
        shared_round = index
        if len(indices) != len(values):
            raise MalformedFrameError(
                f"round {index} draws {len(indices)} indices, the item has {len(values)} values"
            )
    else:
        indices = torch.from_numpy(_explicit_indices(index, len(values), dim))
    return Item(seq, indices, torch.from_numpy(values), reset, shared_round, quantum)


def _explicit_indices(field: object, count: int, dim: int) -> NDArray[np.int64]:
    """Decode and check a gap-coded index field of ``count`` indices below ``dim``."""
    if not isinstance(field, bytes) or not field or field[0] not in INDEX_WIDTHS:
        raise MalformedFrameError("item indices must be a width byte (1, 2 or 4) and gaps")
    width = field[0]
    if count > dim:  # distinct indices below dim: refused before any array is built
        raise MalformedFrameError(f"{count} explicit indices for a {dim}-parameter model")
    if len(field) != 1 + width * count:
        raise MalformedFrameError(f"item indices must be one {width}-byte gap per value")
    gaps = np.frombuffer(field, dtype=f"<u{width}", offset=1).astype(np.int64)
    idx = np.cumsum(gaps + 1) - 1
    if len(idx) and idx[-1] >= dim:  # increasing by construction: the last is the largest
        raise MalformedFrameError(f"item indices outside [0, {dim})")
    return np.asarray(idx, dtype=np.int64)


def link_item_values(row: Sparse, weight: float) -> tuple[torch.Tensor, float | None]:
    """W_ij times a one-row compressed update, as the receiver will decode it: for 8-bit
    rows the weighted quantum (a float32) times the integer levels, so sender and
    receiver add the very same floats."""
    values = row.values.reshape(-1).detach()
    if row.quantum is None:
        return values * weight, None
    step = float(row.quantum.reshape(-1)[0])
    levels = torch.round(values / step) if step > 0 else torch.zeros_like(values)
    quantum = float(np.float32(step * weight))
    return levels * quantum, quantum


# -- sizes ------------------------------------------------------------------------------


def values_size(count: N, quantized: bool) -> N:
    """Encoded bytes of an item's ``values`` field holding ``count`` values."""
    if quantized:
        return array_header(2) + bin_size(4) + bin_size(count)
    return bin_size(4 * count)


def index_size(count: N, kind: str, shared_round: int = 0, width: N | int | None = None) -> N:
    """Encoded bytes of an item's ``index`` field: ``dense``, ``explicit`` (gap-coded,
    ``width`` bytes a gap: :func:`index_width`, which only the index set can tell) or
    ``shared``."""
    if kind == "dense":
        return count * 0 + NIL
    if kind == "shared":
        return count * 0 + int_size(shared_round)
    if width is None:
        raise ValueError("an explicit index field's size needs its gap width")
    return bin_size(1 + width * count)


def item_size(
    seq: N,
    count: N,
    kind: str,
    quantized: bool,
    shared_round: int = 0,
    width: N | int | None = None,
) -> N:
    """Encoded bytes of one ``[seq, index, values, reset]`` item."""
    return (
        array_header(4)
        + int_size(seq)
        + index_size(count, kind, shared_round, width)
        + values_size(count, quantized)
        + BOOL
    )


def row_index_widths(indices: torch.Tensor, kept: torch.Tensor, dim: int) -> NDArray[np.int64]:
    """(K,) gap width of each row's explicit index set: the first ``kept[r]`` entries of
    row r of ``indices`` (K, k), as the simulators size K rows' frames at once."""
    idx = indices.to("cpu", torch.int64).numpy()
    cols = np.arange(idx.shape[1])
    valid = cols[None, :] < kept.to("cpu", torch.int64).numpy()[:, None]
    # Padding sorts last, as distinct values past every index: the valid entries lead.
    ordered = np.sort(np.where(valid, idx, dim + cols[None, :]), axis=1)
    largest = np.where(valid, index_gaps(ordered), 0).max(axis=1, initial=0)
    return index_width(np.asarray(largest, dtype=np.int64))


def index_kind(item: Item) -> str:
    if item.indices is None:
        return "dense"
    return "shared" if item.shared_round is not None else "explicit"


def encoded_item_size(item: Item) -> int:
    kind = index_kind(item)
    width = _sorted_gaps(item)[2] if kind == "explicit" else None
    return item_size(
        item.seq,
        int(item.values.numel()),
        kind,
        item.quantum is not None,
        item.shared_round or 0,
        width,
    )


def step_bytes(stamp: int) -> int:
    """Encoded bytes of the ``"step": [stamp, float64]`` entry of an update payload."""
    return str_size(4) + array_header(2) + int_size(stamp) + 9


def validation_bytes(stopped: bool) -> int:
    """Encoded bytes of the ``"val"`` entry of an update payload."""
    return str_size(3) + bin_size(0 if stopped else VALIDATION_BYTES)


def payload_size(dim: int, ack: N, items_bytes: N, n_items: N) -> N:
    """Encoded bytes of an update payload whose items take ``items_bytes`` together
    (plus :func:`step_bytes` where it announces the sender's step)."""
    return (
        map_header(4)
        + str_size(3)
        + int_size(dim)
        + str_size(3)
        + int_size(ack)
        + str_size(3)  # "inc": two incarnation ids
        + array_header(2)
        + 2 * bin_size(INCARNATION_BYTES)
        + str_size(5)
        + array_header(n_items)
        + items_bytes
    )

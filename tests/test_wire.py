"""The update codec: exact sizes (the simulator's byte counts), round trips, rejections."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.identity import PEER_ID_CHARS, SiteIdentity
from node.errors import MalformedFrameError
from node.state.backlog import Item
from node.wire.frames import frame_size, length_prefix, seal
from node.wire.update import decode_update, encode_update, encoded_item_size, payload_size

NO_INC = [bytes(8), bytes(8)]
DIM = 300


def _shared(round: int) -> torch.Tensor:
    return torch.arange(round % 7, DIM, 7)[: 10 + round % 5]


@st.composite
def items(draw: st.DrawFn) -> Item:
    seq = draw(st.integers(0, 2**40))
    kind = draw(st.sampled_from(["dense", "explicit", "shared", "reset"]))
    quantized = kind != "reset" and draw(st.booleans())
    shared_round = None
    if kind in ("dense", "reset"):
        indices = None
        count = DIM
    elif kind == "shared":
        shared_round = draw(st.integers(0, 70_000))
        indices = _shared(shared_round)
        count = len(indices)
    else:
        count = draw(st.integers(0, 40))
        # A compressor's index set: distinct indices, in any order (top-k's is by size).
        indices = torch.tensor(
            draw(st.lists(st.integers(0, DIM - 1), min_size=count, max_size=count, unique=True)),
            dtype=torch.int64,
        )
    quantum = draw(st.floats(2.0**-20, 10.0, width=32)) if quantized else None
    if quantum is not None:
        ints = draw(st.lists(st.integers(-127, 127), min_size=count, max_size=count))
        values = torch.tensor(ints, dtype=torch.float32) * float(np.float32(quantum))
    else:
        raw = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=count, max_size=count))
        values = torch.tensor(raw, dtype=torch.float32)
    return Item(seq, indices, values, kind == "reset", shared_round, quantum)


@settings(max_examples=200, deadline=None)
@given(st.lists(items(), max_size=4), st.integers(-1, 2**33))
def test_payload_size_is_the_encoded_length(batch: list[Item], ack: int) -> None:
    payload = encode_update(DIM, ack, batch)
    total = sum(encoded_item_size(item) for item in batch)
    assert payload_size(DIM, ack, total, len(batch)) == len(payload)
    decoded = decode_update(payload, DIM, _shared, max_round=70_000)
    assert decoded.ack == ack
    for sent, got in zip(batch, decoded.items, strict=True):
        assert (got.seq, got.reset, got.shared_round) == (sent.seq, sent.reset, sent.shared_round)
        if sent.indices is None or sent.shared_round is not None:
            assert torch.equal(got.values, sent.values)  # 8-bit values too: bit for bit
            if sent.indices is None:
                assert got.indices is None
            else:
                assert got.indices is not None and torch.equal(got.indices, sent.indices)
        else:  # explicit indices arrive in increasing order, each with its own value
            assert got.indices is not None
            order = torch.argsort(sent.indices)
            assert torch.equal(got.indices, sent.indices[order])
            assert torch.equal(got.values, sent.values[order])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**40),
    st.sampled_from(["update", "receipt", "sum", "key"]),
    st.binary(max_size=70_000),
)
def test_frame_size_is_the_sealed_length(round: int, topic: str, payload: bytes) -> None:
    identity = SiteIdentity.generate()
    assert len(identity.peer_id) == PEER_ID_CHARS
    body = seal(identity, round, topic, payload)
    assert frame_size(PEER_ID_CHARS, round, topic, len(payload)) == len(length_prefix(body) + body)


def test_shared_indices_and_q8_cost_what_they_should() -> None:
    """Shared-index items send their round, not their indices; 8-bit items one byte a
    value plus a float32 quantum."""
    idx = _shared(3)
    k = len(idx)
    values = torch.ones(k)
    explicit = encoded_item_size(Item(0, idx, values))
    shared = encoded_item_size(Item(0, idx, values, shared_round=3))
    q8 = encoded_item_size(Item(0, idx, values, shared_round=3, quantum=1.0))
    # Explicit: a width byte and one byte a gap (gaps of 7 here) with a bin header; shared
    # sends the round (one byte) instead.
    assert explicit - shared == (2 + 1 + k) - 1
    assert shared - q8 == 3 * k - 7  # 4k float32 bytes → k levels + [4-byte quantum] framing


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ([0, 5, b"\x00" * 4, False], "outside"),  # a round past the frame's own
        ([0, 1, b"\x00" * 4, False], "draws"),  # count mismatch with the round's set
        ([0, None, [b"\x00\x00\xc0\x7f", b"\x01" * DIM], False], "finite"),  # NaN quantum
        ([0, None, [b"\x00\x00\x80\x3f", b"\x80" + b"\x01" * (DIM - 1)], False], "levels"),
        ([0, None, [b"\x00\x00\x80\x3f", b"\x01" * DIM], True], "reset items carry float32"),
        ([0, None, [b"\x00\x00\x80\x3f"], False], r"\[float32 quantum, int8 levels\]"),
    ],
)
def test_bad_items_are_malformed(item: list[object], match: str) -> None:
    payload = msgpack.packb({"dim": DIM, "ack": -1, "inc": NO_INC, "items": [item]})
    with pytest.raises(MalformedFrameError, match=match):
        decode_update(payload, DIM, _shared, max_round=3)


@pytest.mark.parametrize(
    ("indices", "width"),
    [([5], 1), ([0, 255], 1), ([0, 257], 2), ([3, 60_000, 60_001], 2), ([0, 99_999], 4)],
)
def test_explicit_indices_take_the_narrowest_gap_width(indices: list[int], width: int) -> None:
    dim = 100_000
    item = Item(0, torch.tensor(indices[::-1]), torch.arange(len(indices), dtype=torch.float32))
    payload = encode_update(dim, -1, [item])
    field = msgpack.unpackb(payload)["items"][0][1]
    assert field[0] == width and len(field) == 1 + width * len(indices)
    assert payload_size(dim, -1, encoded_item_size(item), 1) == len(payload)
    got = decode_update(payload, dim).items[0]
    assert got.indices is not None and got.indices.tolist() == indices
    assert got.values.tolist() == list(range(len(indices)))[::-1]


@pytest.mark.parametrize(
    ("field", "match"),
    [
        (b"", "width byte"),
        (b"\x03" + b"\x00" * 6, "width byte"),  # no such width
        (b"\x01" + b"\x00", "one 1-byte gap per value"),  # one gap for two values
        (b"\x02" + b"\x00\x00" * 3, "one 2-byte gap per value"),
        (b"\x02" + b"\x00\x00" + b"\x2b\x01", "outside"),  # 0, then 0 + 299 + 1 = 300
        (b"\x04" + b"\xff\xff\xff\xff" * 2, "outside"),  # no wrap-around past 2^32
        ([1, 2], "width byte"),  # not bytes at all
        (b"\x01" + b"\x00" * (DIM + 1), "explicit indices for a"),  # more than dim distinct
    ],
)
def test_bad_explicit_indices_are_malformed(field: object, match: str) -> None:
    count = DIM + 1 if isinstance(field, bytes) and len(field) == DIM + 2 else 2
    item = [0, field, np.zeros(count, "<f4").tobytes(), False]
    payload = msgpack.packb({"dim": DIM, "ack": -1, "inc": NO_INC, "items": [item]})
    with pytest.raises(MalformedFrameError, match=match):
        decode_update(payload, DIM, _shared, max_round=3)


def test_shared_item_without_a_shared_compressor_is_malformed() -> None:
    payload = msgpack.packb({"dim": DIM, "ack": -1, "inc": NO_INC, "items": [[0, 0, b"", False]]})
    with pytest.raises(MalformedFrameError, match="draws none"):
        decode_update(payload, DIM, None, max_round=3)


@pytest.mark.parametrize(
    "inc", [None, [bytes(8)], [bytes(8), bytes(7)], [bytes(8), "x" * 8], [bytes(8)] * 3]
)
def test_incarnation_ids_must_be_two_8_byte_strings(inc: object) -> None:
    fields: dict[str, object] = {"dim": DIM, "ack": -1, "items": []}
    if inc is not None:
        fields["inc"] = inc
    with pytest.raises(MalformedFrameError, match="inc"):
        decode_update(msgpack.packb(fields), DIM)


def test_incarnation_ids_round_trip() -> None:
    mine, yours = b"\x01" * 8, b"\x02" * 8
    update = decode_update(encode_update(DIM, 3, [], None, (mine, yours)), DIM)
    assert (update.inc, update.echo, update.ack) == (mine, yours, 3)


def test_a_frame_naming_many_shared_rounds_is_refused_before_any_draw() -> None:
    """Each shared-index item makes the receiver draw its round's index set; one frame
    naming 4,096 rounds cost 4,096 draws. Now more than MAX_SHARED_ITEMS is malformed, and
    nothing is drawn for it."""
    from node.wire.update import MAX_SHARED_ITEMS

    drawn: list[int] = []

    def counting(round: int) -> torch.Tensor:
        drawn.append(round)
        return _shared(round)

    def frame(n: int) -> bytes:
        items = [
            [seq, seq, np.zeros(len(_shared(seq)), "<f4").tobytes(), False] for seq in range(n)
        ]
        packed: bytes = msgpack.packb({"dim": DIM, "ack": -1, "inc": NO_INC, "items": items})
        return packed

    assert len(decode_update(frame(MAX_SHARED_ITEMS), DIM, counting, 10**6).items) == 64
    drawn.clear()
    with pytest.raises(MalformedFrameError, match="shared-index items"):
        decode_update(frame(MAX_SHARED_ITEMS + 1), DIM, counting, 10**6)
    assert drawn == []

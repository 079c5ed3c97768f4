"""The frame codec and guard: signed, size-limited, replay-proof; fuzzed with hypothesis."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.identity import SiteIdentity
from node.errors import (
    ForgedFrameError,
    FrameError,
    FutureFrameError,
    MalformedFrameError,
    OversizedFrameError,
    ReplayedFrameError,
    StaleFrameError,
    UnknownSenderError,
)
from node.wire.frames import FrameGuard, check_length, decode, length_prefix, seal

ALICE, BOB, MALLORY = SiteIdentity.generate(), SiteIdentity.generate(), SiteIdentity.generate()


def _guard() -> FrameGuard:
    return FrameGuard([ALICE.peer_id, BOB.peer_id], window=2)


def test_round_trip() -> None:
    body = seal(ALICE, 3, "update", b"payload")
    frame = _guard().admit(body, via=ALICE.peer_id)
    assert (frame.sender, frame.round, frame.topic, frame.payload) == (
        ALICE.peer_id,
        3,
        "update",
        b"payload",
    )


def test_replay_is_rejected_and_counted() -> None:
    guard = _guard()
    body = seal(ALICE, 0, "update", b"x")
    guard.admit(body, ALICE.peer_id)
    with pytest.raises(ReplayedFrameError):
        guard.admit(body, ALICE.peer_id)
    assert guard.rejected["replayed"] == 1 and guard.accepted == 1


def test_stale_round_is_rejected() -> None:
    guard = _guard()
    guard.advance(10)
    guard.admit(seal(ALICE, 8, "update", b"x"), ALICE.peer_id)
    with pytest.raises(StaleFrameError):
        guard.admit(seal(ALICE, 7, "update", b"x"), ALICE.peer_id)


def test_unknown_sender_and_impersonation_are_rejected() -> None:
    guard = _guard()
    with pytest.raises(UnknownSenderError):
        guard.admit(seal(MALLORY, 0, "update", b"x"), MALLORY.peer_id)
    with pytest.raises(ForgedFrameError):
        guard.admit(seal(ALICE, 0, "update", b"x"), via=BOB.peer_id)


@pytest.mark.parametrize("field", [2, 3, 4, 5])
def test_tampered_fields_break_the_signature(field: int) -> None:
    fields = msgpack.unpackb(seal(ALICE, 5, "update", b"payload"))
    original = fields[field]
    fields[field] = (
        original + 1
        if isinstance(original, int)
        else (
            original + "x" if isinstance(original, str) else bytes([original[0] ^ 1]) + original[1:]
        )
    )
    with pytest.raises(ForgedFrameError):
        _guard().admit(msgpack.packb(fields), ALICE.peer_id)


def test_signature_from_another_key_is_forged() -> None:
    fields = msgpack.unpackb(seal(MALLORY, 0, "update", b"x"))
    fields[1] = ALICE.peer_id  # Mallory claims to be Alice
    with pytest.raises(ForgedFrameError):
        _guard().admit(msgpack.packb(fields), None)


def test_size_limits_apply_before_reading() -> None:
    body = seal(ALICE, 0, "update", b"x" * 1000)
    with pytest.raises(OversizedFrameError):
        check_length(length_prefix(body), max_bytes=500)
    with pytest.raises(OversizedFrameError):
        decode(body, max_bytes=500)
    with pytest.raises(MalformedFrameError):
        check_length(b"\x00\x01", 500)
    assert check_length(length_prefix(body), 2000) == len(body)


def test_truncated_frames_are_malformed() -> None:
    body = seal(ALICE, 0, "update", b"abc" * 10)
    for cut in (1, 10, len(body) // 2, len(body) - 1):
        with pytest.raises(MalformedFrameError):
            decode(body[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    guard = _guard()
    try:
        guard.admit(data, ALICE.peer_id, max_bytes=4096)
    except FrameError:
        assert sum(guard.rejected.values()) == 1
    else:  # pragma: no cover - a random valid signature is impossible
        raise AssertionError("random bytes were admitted")


VALID = seal(ALICE, 1, "update", b"0123456789" * 8)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_frames_are_rejected_not_crashed(data: st.DataObject) -> None:
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[pos : pos + data.draw(st.integers(1, 16))]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    if bytes(body) == VALID:
        return
    with pytest.raises(FrameError):
        _guard().admit(bytes(body), ALICE.peer_id, max_bytes=4096)


def test_frames_for_far_future_rounds_cannot_grow_the_guard() -> None:
    guard = FrameGuard([ALICE.peer_id])
    for future in range(1000, 1100):
        with pytest.raises(FutureFrameError) as caught:
            guard.admit(seal(ALICE, future, "update", b""), ALICE.peer_id)
        assert caught.value.round == future  # the signed claim, for catching up
    assert guard.nonces_held() == 0 and guard.rejected["future"] == 100
    guard.admit(seal(ALICE, guard.lead, "update", b""), ALICE.peer_id)  # within the lead
    wide = FrameGuard([ALICE.peer_id], max_rounds=8, lead=10_000)
    for future in range(1000, 1100):
        wide.admit(seal(ALICE, future, "update", b""), ALICE.peer_id)
    assert wide.nonces_held() == 8


def test_a_boolean_version_or_an_older_one_is_refused() -> None:
    body = bytearray(VALID)
    body[1] = 0xC3  # msgpack true where the version was: equal to 1 in Python, not a version
    with pytest.raises(MalformedFrameError, match="version"):
        decode(bytes(body))
    body[1] = 0x01  # version 1: its secure frames lack the validation tail
    with pytest.raises(MalformedFrameError, match="version"):
        decode(bytes(body))
    body[1] = 0x02  # version 2: mixes the round's kept coordinates with γ, not step 1
    with pytest.raises(MalformedFrameError, match="version"):
        decode(bytes(body))

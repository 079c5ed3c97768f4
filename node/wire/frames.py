"""Signed, length-prefixed msgpack frames, and the guard that admits them.

On the wire a frame is a 4-byte big-endian length and a msgpack array
``[version, sender, round, nonce, topic, payload, signature]``. The length is checked
against the limit before the body is read, and the body is unpacked with msgpack's own
size limits, so a hostile peer can make us allocate at most ``max_bytes``.

The signature (the sender's Ed25519 site key) covers sender, round, nonce, topic and the
SHA-256 of the payload, under a domain tag. :class:`FrameGuard` then admits a frame only
from an allowlisted sender that matches the authenticated connection, with a round no
older than the replay window nor further ahead than a small lead, and a nonce not seen
before; every rejection is counted.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from crypto.errors import BadSignatureError
from crypto.identity import SIGNATURE_BYTES, SiteIdentity, public_key_from_peer_id, verify
from murmur import bounded_msgpack
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
from node.wire.msgsize import N, array_header, bin_size, int_size, str_size

# 2: secure contributions carry the validation tail and receipts a ``stopped`` flag
# (node.exchange.secure.validation_tail), so a node of version 1 could not read ours.
# 3: the coordinates every site kept in a round mix with step 1, and the announced step
# of the others may be 0 (node.gossip.choco.mix_step): a node of version 2 mixes them
# with one γ, and sites that mix alike keep the consortium's average where W puts it.
VERSION = 3
PREFIX_BYTES = 4
NONCE_BYTES = 16
MAX_TOPIC = 64
MAX_PEER_ID = 128
DEFAULT_MAX_FRAME_BYTES = 16 * 2**20
_DOMAIN = b"murmur-frame-v1"


@dataclass(frozen=True)
class Frame:
    """A decoded frame; ``signature`` is checked by :class:`FrameGuard`, not by decoding."""

    sender: str
    round: int
    nonce: bytes
    topic: str
    payload: bytes
    signature: bytes = b""

    def signed_message(self) -> bytes:
        digest = hashlib.sha256(self.payload).digest()
        packed: bytes = msgpack.packb(
            [_DOMAIN, self.sender, self.round, self.nonce, self.topic, digest]
        )
        return packed


def seal(identity: SiteIdentity, round: int, topic: str, payload: bytes) -> bytes:
    """Sign and encode a frame body (without the length prefix) from this site."""
    frame = Frame(identity.peer_id, round, os.urandom(NONCE_BYTES), topic, payload)
    signature = identity.sign(frame.signed_message())
    body: bytes = msgpack.packb(
        [VERSION, frame.sender, frame.round, frame.nonce, frame.topic, frame.payload, signature]
    )
    return body


def peek(body: bytes) -> tuple[int, str]:
    """(round, topic) of a frame this site sealed, read without copying its payload (for
    the audit log); raises MalformedFrameError on anything else."""
    unpacker = msgpack.Unpacker(io.BytesIO(body), read_size=64)
    try:
        if unpacker.read_array_header() != 7:
            raise ValueError("not a 7-field frame")
        _version, _sender, round, _nonce, topic = (unpacker.unpack() for _ in range(5))
    except (ValueError, msgpack.UnpackException, StopIteration) as exc:
        raise MalformedFrameError(f"cannot read a frame's header: {exc}") from None
    if not isinstance(round, int) or not isinstance(topic, str):
        raise MalformedFrameError("frame header fields of the wrong type")
    return round, topic


def frame_size(sender_chars: int, round: N, topic: str, payload: N) -> N:
    """Bytes on the wire of a sealed frame — length prefix, envelope, signature — whose
    payload has ``payload`` bytes, as :func:`seal` and :func:`length_prefix` write it."""
    return (
        PREFIX_BYTES
        + array_header(7)
        + int_size(VERSION)
        + str_size(sender_chars)
        + int_size(round)
        + bin_size(NONCE_BYTES)
        + str_size(len(topic.encode()))
        + bin_size(payload)
        + bin_size(SIGNATURE_BYTES)
    )


def length_prefix(body: bytes) -> bytes:
    return len(body).to_bytes(PREFIX_BYTES, "big")


def check_length(prefix: bytes, max_bytes: int) -> int:
    """The body length announced by a prefix; refused before any of the body is read."""
    if len(prefix) != PREFIX_BYTES:
        raise MalformedFrameError(f"truncated length prefix ({len(prefix)} of 4 bytes)")
    size = int.from_bytes(prefix, "big")
    if size == 0:
        raise MalformedFrameError("empty frame")
    if size > max_bytes:
        raise OversizedFrameError(f"frame of {size:,} bytes exceeds the {max_bytes:,}-byte limit")
    return size


def decode(body: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Parse a frame body; any deviation from the format is a :class:`MalformedFrameError`."""
    if len(body) > max_bytes:
        raise OversizedFrameError(f"frame of {len(body):,} bytes exceeds {max_bytes:,}")
    fields = bounded_msgpack.unpack(
        body,
        MalformedFrameError,
        "the frame",
        strict_map_key=True,
        max_str_len=max(MAX_TOPIC, MAX_PEER_ID),
        max_bin_len=max_bytes,
        max_array_len=8,
        max_map_len=0,
    )
    if not isinstance(fields, list) or len(fields) != 7:
        raise MalformedFrameError("a frame is a 7-element array")
    version, sender, round_, nonce, topic, payload, signature = fields
    if type(version) is not int or version != VERSION:  # msgpack true == 1 in Python
        raise MalformedFrameError(f"unsupported frame version {version!r}")
    if not isinstance(sender, str) or not 0 < len(sender) <= MAX_PEER_ID:
        raise MalformedFrameError("sender must be a peer ID string")
    if not isinstance(round_, int) or isinstance(round_, bool) or not 0 <= round_ < 2**62:
        raise MalformedFrameError("round must be a non-negative integer")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise MalformedFrameError("nonce must be 16 bytes")
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC:
        raise MalformedFrameError("topic must be a short string")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise MalformedFrameError("payload and signature must be bytes")
    if msgpack.packb(fields) != body:
        # msgpack has several encodings of one value (an int8 1 is also version 1); the
        # signature covers the values, so only the canonical bytes of a frame are one.
        raise MalformedFrameError("frame is not in canonical msgpack form")
    return Frame(sender, round_, nonce, topic, payload, signature)


class FrameGuard:
    """Admits frames from the consortium only, once each, within [round − window, round + lead].

    ``window`` rounds of nonces are remembered per sender; a frame older than that is
    stale and refused (its contents are not lost: the backlog resends them in the
    sender's next frame). A frame more than ``lead`` rounds ahead is refused too, as
    :class:`~node.errors.FutureFrameError` carrying its signed round: the sender chooses
    the round number, and a far-future one must neither be buffered nor move this node
    (the runtime catches up only as far as its slowest live neighbour, a bounded jump at
    a time; :class:`node.pacing.Pacing`). At most ``max_per_round`` frames per
    sender and round, and ``max_rounds`` distinct rounds per sender, are remembered,
    which bounds the memory a flooding peer can take.
    """

    def __init__(
        self,
        allowlist: Iterable[str],
        window: int = 4,
        max_per_round: int = 256,
        max_rounds: int = 64,
        lead: int = 4,
    ):
        self.window = window
        self.lead = lead
        self.max_per_round = max_per_round
        self.max_rounds = max_rounds
        self.round = 0
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._keys: dict[str, bytes] = {}
        self._seen: dict[str, dict[int, set[bytes]]] = {}
        self.set_allowlist(allowlist)

    def set_allowlist(self, peers: Iterable[str]) -> None:
        """Replace the consortium (config reload); a peer ID without an Ed25519 key fails."""
        keys = {}
        for peer in peers:
            try:
                keys[peer] = public_key_from_peer_id(peer)
            except BadSignatureError as exc:
                raise UnknownSenderError(str(exc)) from None
        self._keys = keys

    def advance(self, round: int) -> None:
        """This node is now in ``round``; forget nonces that fell out of the window."""
        self.round = max(self.round, round)
        horizon = self.round - self.window
        for rounds in self._seen.values():
            for old in [r for r in rounds if r < horizon]:
                del rounds[old]

    def nonces_held(self) -> int:
        """How many nonces the replay check remembers now (bounded; see the class doc)."""
        return sum(len(seen) for rounds in self._seen.values() for seen in rounds.values())

    def admit(
        self, body: bytes, via: str | None, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> Frame:
        """Decode and check a frame received on a connection authenticated as ``via``."""
        try:
            frame = decode(body, max_bytes)
            self._check(frame, via)
        except FrameError as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return frame

    def _check(self, frame: Frame, via: str | None) -> None:
        key = self._keys.get(frame.sender)
        if key is None:
            raise UnknownSenderError(f"sender {frame.sender} is not in the consortium")
        if via is not None and via != frame.sender:
            raise ForgedFrameError(f"frame claims {frame.sender} but came from {via}")
        try:
            verify(key, frame.signed_message(), frame.signature)
        except BadSignatureError:
            raise ForgedFrameError(f"bad signature on a frame from {frame.sender}") from None
        if frame.round < self.round - self.window:
            raise StaleFrameError(
                f"round {frame.round} from {frame.sender} is older than {self.round - self.window}"
            )
        if frame.round > self.round + self.lead:
            raise FutureFrameError(
                f"round {frame.round} from {frame.sender} is more than {self.lead} rounds "
                f"ahead of ours ({self.round})",
                frame.round,
            )
        rounds = self._seen.setdefault(frame.sender, {})
        seen = rounds.get(frame.round)
        if seen is None:
            if len(rounds) >= self.max_rounds:
                oldest = min(rounds)
                if frame.round < oldest:
                    raise StaleFrameError(
                        f"round {frame.round} from {frame.sender} is older than every round "
                        f"of its last {self.max_rounds} remembered"
                    )
                del rounds[oldest]
            seen = rounds[frame.round] = set()
        if frame.nonce in seen:
            raise ReplayedFrameError(f"replayed frame from {frame.sender}, round {frame.round}")
        if len(seen) >= self.max_per_round:
            raise ReplayedFrameError(
                f"{frame.sender} sent more than {self.max_per_round} frames in round {frame.round}"
            )
        seen.add(frame.nonce)

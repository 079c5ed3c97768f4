"""The audit log: one JSON line an entry, each chained to the one before and signed.

An entry is ``{"seq", "t", "kind", "data", "prev"}`` and, for the last entry of each
write, ``"sig"``: ``prev`` is the BLAKE2b-256 digest of the previous entry (32 zero
bytes for the first), and ``sig`` the site key's Ed25519 signature of this entry's own
digest, taken over its canonical JSON without ``sig``. Through the chain one signature
covers every entry before it, so a write costs one signature rather than one an entry. A
node writes once a second (below), so a signature vouches for a second's entries (about
30 rounds where rounds are short): a signature and a write each round were a third of
what the log cost a real node a round (``benchmarks/results/audit.md``). Editing,
deleting or reordering an entry breaks the chain at that entry, and ``verify`` still
names it (the entry after it is vouched for by the next signature); rewriting the chain
from an entry on needs the site's key for the next signature. An attacker who holds the
site's disk holds its key file too, so signing less often gives that attacker nothing
the key would not. Cutting entries off the end leaves a valid chain, so every sync also
writes the head (the last entry's sequence number and digest, signed) to ``audit.head``
beside the log, atomically: a log shorter than its head was truncated. A neighbour's log
is the anchor against a site that rolls back both files (``murmur audit cross-check``).

What is logged, by kind: ``config`` (SHA-256 of the config as TOML, at start and at each
reload), ``start`` (peer ID, resumed or not, round), ``frames`` (frames sent and received
one after another, each as [``sent`` or ``received``, peer, round, topic, bytes on the
wire, BLAKE2b-128 digest of the frame]; the entry's time is its first frame's. A ring
node's round usually logs its frames as one entry where they were one each: two
entries a round rather than five, about 40% fewer bytes. Logs written before hold a
``sent`` or ``received`` entry a frame; the readers take both,
:func:`node.audit.check.frames_of`), ``sum_opened`` (round, aggregator,
contributor bitmap, kept or refused), ``membership``, ``key_pinned``, ``key_rotated``
and ``key_unpinned`` (written by ``murmur keys``), ``round`` (the neighbours missed, ε
spent after it), ``dp_budget_spent``, ``finish``, ``crashed``, ``audit_recovered``.

Durability without a write or an fsync of its own each round: the checkpoint the node
writes at the end of every round (and before it sends), which is fsynced anyway, holds
every entry not yet known to be on disk (``tail``). So how often the log itself is
written only decides how far the file lags behind its node, which is a matter of time,
not of rounds: at the end of the first round ``SYNC_EVERY_S`` after the last sync, the
entries since are written in one write and signed, and a writer thread fsyncs the log
and replaces its signed head atomically, off the round. A node whose rounds take longer
than that syncs every round; one whose rounds take 30-odd ms syncs every ~30 rounds
rather than every 8, as it did: a write, its signature, the fsync and the head cost
0.7-0.9 ms of CPU between rounds (caches cold), four or five rounds' entries (measured
on this project's 2-core machine; the whole log a round: ``benchmarks/results/audit.md``).
What is left a round is mostly the log's few calls each meeting cold caches (between
them the node trains): the write-ahead checkpoint's tail, with nothing new to seal in
three rounds of four, costs about 45 µs after a 29 ms pause on that machine, against a
few µs warm.
After a crash the restarted node appends what the log lost from its checkpoint
(``recover``, logged as ``audit_recovered``), so no entry of a checkpointed round is ever
lost; a crash loses only what happened after the last checkpoint, which the node then
does again (a neighbour's log still holds the frames). Until then, and in a log read
while its node runs, the last rounds (``SYNC_EVERY_S`` and the round under way, or
longer while a slow sync is still running) are missing from the file: ``cross-check``
compares only the rounds both logs have finished, so a log that is behind is not taken
for one that lies.

The files are 0600 in the 0700 state directory: they name peers and rounds, which is the
site's business. ``busy_s`` counts the wall time spent appending and flushing, so a
node reports what its log costs it (the ``round`` event's ``audit_s``, and the metric
``murmur_audit_seconds_total``) in the very run it keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.identity import SiteIdentity
from murmur.files import atomic_write, sync_directory
from node.errors import ConfigError

if TYPE_CHECKING:
    from node.config import NodeConfig

LOG_FILE = "audit.log"
HEAD_FILE = "audit.head"
GENESIS = bytes(32)
HEAD_DOMAIN = b"murmur-audit-head/1"
SYNC_EVERY_S = 1.0  # the log's write and fsync: at least this long apart, at a round's
# end, once the previous sync is done; until then the checkpoint holds the entries


# Node events that also go into the audit log, as they are (node.runtime.Node.emit).
AUDITED = frozenset(
    {
        "start",
        "joined",
        "membership",
        "removed",
        "reload_failed",
        "key_pinned",
        "sum_opened",
        "dp_budget_spent",
        "finish",
        "crashed",
        "audit_recovered",
    }
)


def config_digest(config: NodeConfig) -> str:
    """What a config change is logged as: the SHA-256 of the config as TOML."""
    return hashlib.sha256(config.to_toml().encode()).hexdigest()


# One encoder for every entry: ``json.dumps`` with these options builds a new one a call.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


# A frame as noted: (direction, peer, round, topic, bytes on the wire, digest), and the
# names of those fields. Consecutive frames go into one ``frames`` entry at the next seal,
# each as a JSON array in this order (:func:`frame_item`).
Frame = tuple[str, str, int, str, int, str]
FRAME_FIELDS = ("dir", "peer", "round", "topic", "bytes", "digest")
# One frame in a ``frames`` entry, as the encoder writes it for values JSON writes as
# they are (:func:`frame_item`).
_FRAME_ITEM = b'["%s","%s",%d,"%s",%d,"%s"]'
# Every entry, its kind and data already JSON (encoded when noted): the encoder's output
# for the whole entry is these pieces in this order, keys sorted.
_ENTRY_LINE = b'{"data":%s,"kind":%s,"prev":"%s","seq":%d,"t":%r}'
_PLAIN = re.compile(r"[A-Za-z0-9_.:/+=-]*")
# The kinds of entry a round notes most, as JSON.
_KINDS = {kind: _encode(kind).encode() for kind in ("frames", "round")}
_FRAMES = _KINDS["frames"]


_INT64 = 1 << 63


def _plain_types(way: object, peer: object, round_: object, topic: object, size: object) -> bool:
    """Whether a frame's values are of the kinds the node passes: ASCII text, and ints
    (no bool) of 64 bits; these JSON always holds, so their JSON can wait for the seal.
    Anything else is encoded when noted, where a value JSON cannot hold fails at the
    caller rather than at every later seal."""
    return (
        type(way) is str
        and type(peer) is str
        and type(topic) is str
        and type(size) is int
        and type(round_) is int
        and way.isascii()
        and peer.isascii()
        and topic.isascii()
        and -_INT64 <= round_ < _INT64
        and -_INT64 <= size < _INT64
    )


def frame_item(frame: Frame) -> bytes:
    """One frame of a ``frames`` entry as its canonical JSON array: a template, about a
    third of the encoder's time, where no value needs JSON's escapes and the numbers are
    plain ints; else the encoder."""
    direction, peer, round_, topic, size, digest = frame
    if (
        _plain_types(direction, peer, round_, topic, size)
        and _PLAIN.fullmatch(direction)
        and _PLAIN.fullmatch(peer)
        and _PLAIN.fullmatch(topic)
        and _PLAIN.fullmatch(digest)
    ):
        return _FRAME_ITEM % (
            direction.encode(),
            peer.encode(),
            round_,
            topic.encode(),
            size,
            digest.encode(),
        )
    return _encode(list(frame)).encode()


def frames_data(frames: list[Frame | bytes]) -> bytes:
    """A ``frames`` entry's data, ``{"frames": [[dir, peer, round, topic, bytes, digest],
    ...]}``, as its canonical JSON; an item already encoded (bytes) is used as it is."""
    items = [item if isinstance(item, bytes) else frame_item(item) for item in frames]
    return b'{"frames":[' + b",".join(items) + b"]}"


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's digest is taken over: its JSON without ``sig``, keys sorted."""
    return _encode({k: v for k, v in entry.items() if k != "sig"}).encode()


def digest(entry: dict[str, Any]) -> bytes:
    return hashlib.blake2b(canonical(entry), digest_size=32).digest()


def signed_line(body: bytes, signature: bytes) -> bytes:
    """A signed entry's line: its canonical JSON with ``sig`` added (the order of keys in a line
    does not matter: :func:`canonical` sorts them again), so an entry is serialised once."""
    return body[:-1] + b',"sig":"' + signature.hex().encode() + b'"}\n'


def frame_digest(body: bytes) -> str:
    """What a sender and its receiver both log of one frame (hex BLAKE2b-128)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def head_message(seq: int, last: bytes) -> bytes:
    return HEAD_DOMAIN + seq.to_bytes(8, "big") + last


class AuditLog:
    """Appends entries for one site; see the module docstring."""

    def __init__(self, state_dir: Path, identity: SiteIdentity) -> None:
        self.path = state_dir / LOG_FILE
        self.head_path = state_dir / HEAD_FILE
        self.identity = identity
        self.seq, self.last = -1, GENESIS  # of the last entry sealed (:meth:`_seal`)
        # (kind, data, time) of each entry noted since the last seal, kind and data as
        # JSON. Entries are chained and hashed together at the next seal (a checkpoint's
        # tail, or a write): done an entry at a time between the node's other work, each
        # entry ran with cold caches, about 40 µs an entry in a real node against 7 in a
        # loop (measured).
        self.raw: list[tuple[bytes, bytes | list[Frame | bytes], float]] = []
        # (seq, line, digest to sign): sealed, not written. A line is the entry's
        # canonical JSON; the last one written gets its signature then (:meth:`_write`).
        self.pending: list[tuple[int, bytes, bytes | None]] = []
        # Every sealed entry not yet known to be on disk, as log lines, and (last seq,
        # end in the text) of each seal: the checkpoint's tail, kept as one text that
        # grows by a seal's lines and loses a prefix once a sync covers it, so a tail
        # costs no join of every line since the last sync, twice a round.
        self._tail_text = ""
        self._tail_marks: list[tuple[int, int]] = []
        self.synced_seq = -1  # set by the writer thread once an fsync has returned
        self._fd: int | None = None
        self._created = False
        self._last_sync = time.monotonic()
        # Appends and writes run on the event loop, syncs in the writer thread: each keeps
        # its own clock, so neither updates the other's.
        self.append_s = self.sync_s = 0.0
        # Its own thread: in the shared default executor a sync would queue behind other
        # sites' (or this site's) training, which runs there too.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="murmur-audit")
        self._syncing: Future[None] | None = None
        self._resume()

    def _resume(self) -> None:
        """Continue the chain from the last complete entry on disk. A line torn by a crash
        mid-write is cut off (the checkpoint's tail still holds it: :meth:`recover`)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
        if len(keep) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(keep))
                os.fsync(handle.fileno())
        lines = keep.splitlines()
        if lines:
            try:
                entry = json.loads(lines[-1])
                self.seq, self.last = int(entry["seq"]), digest(entry)
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"{self.path} ends in an entry that does not parse: check it with "
                    "`murmur audit verify`, then move it aside to start a new log"
                ) from None
        self.synced_seq = self.seq

    def append(self, kind: str, **data: Any) -> None:
        """Note an entry: its kind and data are serialised now (a value JSON cannot hold
        fails here, at the caller), the entry chained and hashed at the next seal."""
        self.raw.append(
            (_KINDS.get(kind) or _encode(kind).encode(), _encode(data).encode(), time.time())
        )

    def frame(self, kind: str, peer: str, round: int, topic: str, body: bytes, size: int) -> None:
        """Note a frame ``sent`` or ``received`` (``kind``): peer, round, topic, its bytes on
        the wire and its digest (:func:`frame_digest`), taken now, so no frame is held.
        Frames noted one after another, with no other entry or seal between them, go into
        one ``frames`` entry at the next seal, its time the first one's (each names its
        round): a ring node's round usually logs its four frames as one entry, where they
        were four, so two entries a round rather than five (each entry costs a chain
        digest, a line and its bytes in two checkpoints a round). Each frame's JSON is made
        at the seal where its values are of the kinds the node passes (:func:`_plain_types`),
        else now, so a value JSON cannot hold fails here, at the caller."""
        noted: Frame = (kind, peer, round, topic, size, frame_digest(body))
        item: Frame | bytes = noted
        if not _plain_types(kind, peer, round, topic, size):
            item = _encode(list(noted)).encode()
        raw = self.raw
        if raw and isinstance(raw[-1][1], list):  # the open batch: the last entry noted
            raw[-1][1].append(item)
        else:
            raw.append((_FRAMES, [item], time.time()))

    def _seal(self) -> None:
        """Chain and hash every entry noted since the last seal, in order, and add them to
        what is pending and to the tail, all at once (nothing is kept half done). The
        time is a float from ``time.time()``: ``%r`` writes it as JSON does."""
        if not self.raw:
            return
        began = time.perf_counter()
        seq, last, sealed, lines = self.seq, self.last, [], []
        for kind, data, t in self.raw:
            seq += 1
            if isinstance(data, list):
                data = frames_data(data)
            line = _ENTRY_LINE % (data, kind, last.hex().encode(), seq, round(t, 6))
            last = hashlib.blake2b(line, digest_size=32).digest()
            sealed.append((seq, line + b"\n", last))
            lines.append(line)
        self.pending.extend(sealed)
        self.raw = []
        self.seq, self.last = seq, last
        self._tail_text += (b"\n".join(lines) + b"\n").decode()
        self._tail_marks.append((seq, len(self._tail_text)))
        self.append_s += time.perf_counter() - began

    def end_round(self, round: int, missed: list[str], eps_spent: float | None) -> None:
        """The round's entry (who was missing, ε spent after it). Once ``SYNC_EVERY_S``
        has passed since the last sync, what the rounds since logged is written in one
        write, its last entry signed, and the writer thread fsyncs it and writes the
        signed head, off the round. Until then the checkpoint the node writes next holds
        the entries (:meth:`tail`)."""
        self.append("round", round=round, missed=missed, eps_spent=eps_spent)
        if self._sync_due():
            self._write()
            self._sync_soon()

    def _sync_due(self) -> bool:
        """Whether this round's end writes and syncs: ``SYNC_EVERY_S`` since the last
        sync began (or the last flush ended), and that sync done (syncs stay in order,
        and one slow disk does not queue them up)."""
        return time.monotonic() - self._last_sync >= SYNC_EVERY_S and (
            self._syncing is None or self._syncing.done()
        )

    def close_round(self, round: int, missed: list[str], eps_spent: float | None) -> None:
        """The round's entry, then everything written and synced at once (tools, tests)."""
        self.append("round", round=round, missed=missed, eps_spent=eps_spent)
        self.flush()

    def tail(self) -> str:
        """Every entry not yet known to be on disk, as log lines, for the checkpoint:
        written without an fsync, or not written yet. The checkpoint is fsynced anyway, so
        the log's durability costs no fsync of its own in a round; a node restarted after
        a crash puts back what the log lost (:meth:`recover`). One object, not a list of
        lines: the checkpoint's pickler pays a Python call for every object it holds,
        twice a round (about 0.06-0.09 ms a round for a list of lines, measured). Text,
        not bytes: an empty ``bytes`` pickles as a call to ``bytes()``, which a
        ``weights_only`` load refuses, so a checkpoint taken just after a sync would not
        load."""
        self._seal()
        self._prune()
        return self._tail_text

    def _prune(self) -> None:
        """Drop from the tail the seals a sync has covered."""
        synced, cut, done = self.synced_seq, 0, 0
        for seq, end in self._tail_marks:
            if seq > synced:
                break
            cut, done = end, done + 1
        if done:
            self._tail_text = self._tail_text[cut:]
            self._tail_marks = [(seq, end - cut) for seq, end in self._tail_marks[done:]]

    def recover(self, tail: str | list[bytes]) -> int:
        """Append the entries of a checkpoint's ``tail`` that the log lost in a crash, and
        sync; returns how many. A tail that does not continue the log's chain is refused:
        entries were lost before it, or the log was replaced. (Checkpoints written before
        the tail was one text hold a list of lines: the same entries.)"""
        if self.raw or self.pending:  # they would be overwritten below
            raise RuntimeError("the audit log recovers before anything else is logged")
        chunks = tail.encode().splitlines() if isinstance(tail, str) else list(tail)
        lines = [bytes(line).rstrip(b"\n") + b"\n" for line in chunks if line.strip()]
        missing = [line for line in lines if int(json.loads(line)["seq"]) > self.seq]
        if not missing:
            return 0
        first = json.loads(missing[0])
        if int(first["seq"]) != self.seq + 1 or first["prev"] != self.last.hex():
            raise ConfigError(
                f"{self.path} ends at entry {self.seq}, but the checkpoint's unsynced entries "
                f"go on from entry {int(first['seq']) - 1} with another digest: the log lost "
                "entries or was replaced; check it with `murmur audit verify`"
            )
        last = json.loads(missing[-1])
        self.seq, self.last = int(last["seq"]), digest(last)
        # Lines as they were: the last is signed as it is written unless it already was.
        self.pending = [(int(json.loads(line)["seq"]), line, None) for line in missing]
        if "sig" not in last:
            self.pending[-1] = (self.seq, self.pending[-1][1], self.last)
        self.flush()
        return len(missing)

    def flush(self) -> None:
        """Write what is buffered, fsync it, then the signed head (atomically); waits for
        a sync already under way, so syncs stay in order."""
        self._write()
        if self._syncing is not None:
            self._syncing.result()
        if self.synced_seq < self.seq:
            self._sync(self.seq, self.last)
        self._last_sync = time.monotonic()  # nothing left to sync
        self._prune()

    def close(self) -> None:
        """Write and sync what is left and stop the writer thread (the node is stopping)."""
        self.flush()
        self.writer.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def busy_s(self) -> float:
        return self.append_s + self.sync_s

    def _write(self) -> None:
        self._seal()
        if not self.pending:
            return
        began = time.perf_counter()
        if self._fd is None:
            self._created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(self._fd, 0o600)
        *lines, (_, line, mine) = self.pending
        if mine is not None:  # the write's last entry carries the signature for all of it
            line = signed_line(line[:-1], self.identity.sign(mine))
        chunk = b"".join([*(line for _, line, _ in lines), line])
        view = memoryview(chunk)
        while view:  # a short write (a full disk) must not leave a line torn mid-file
            view = view[os.write(self._fd, view) :]
        self.pending = []
        self.append_s += time.perf_counter() - began

    def _sync_soon(self) -> None:
        self._last_sync = time.monotonic()
        self._syncing = self.writer.submit(self._sync, self.seq, self.last)

    def _sync(self, seq: int, last: bytes) -> None:
        """fsync everything written up to entry ``seq``, then the signed head after it."""
        began = time.perf_counter()
        assert self._fd is not None
        os.fsync(self._fd)
        if self._created:
            sync_directory(self.path.parent)
            self._created = False
        head = {
            "seq": seq,
            "digest": last.hex(),
            "sig": self.identity.sign(head_message(seq, last)).hex(),
        }
        # No fsync for the head: a crash may lose its last version (then the log is longer
        # than its head, which verify accepts) but never tears it.
        atomic_write(self.head_path, (json.dumps(head) + "\n").encode(), 0o600, durable=False)
        self.synced_seq = seq
        self.sync_s += time.perf_counter() - began

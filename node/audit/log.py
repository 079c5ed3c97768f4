"""The audit log: one JSON line an entry, each chained to the one before and signed.

An entry is ``{"seq", "t", "kind", "data", "prev", "sig"}``: ``prev`` is the BLAKE2b-256
digest of the previous entry (32 zero bytes for the first), and ``sig`` the site key's
Ed25519 signature of this entry's own digest, taken over its canonical JSON without
``sig``. Editing, deleting or reordering an entry breaks the chain at that entry; a
forged entry needs the site's key. Cutting entries off the end leaves a valid chain, so
every flush also writes the head (the last entry's sequence number and digest, signed)
to ``audit.head`` beside the log, atomically: a log shorter than its head was truncated.
A neighbour's log is the anchor against a site that rolls back both files
(``murmur audit cross-check``).

What is logged, by kind: ``config`` (SHA-256 of the config as TOML, at start and at each
reload), ``start`` (peer ID, resumed or not, round), ``sent`` / ``received`` (peer,
round, topic, BLAKE2b-128 digest of the frame, bytes), ``sum_opened`` (round, aggregator,
contributor bitmap, kept or refused), ``membership``, ``key_pinned``, ``round`` (the
neighbours missed, ε spent after it), ``dp_budget_spent``, ``finish``, ``crashed``.
Entries are buffered and written with one fsync per round, after the round's checkpoint
(``close_round``), so logging costs a write and an fsync a round, not one per frame; the
head is replaced atomically, without an fsync of its own. A crash loses at most the
entries since the last round's flush (a neighbour's log still holds the frames). The
files are 0600 in the 0700 state directory: they name peers and rounds, which is the
site's business.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
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
    }
)


def config_digest(config: NodeConfig) -> str:
    """What a config change is logged as: the SHA-256 of the config as TOML."""
    return hashlib.sha256(config.to_toml().encode()).hexdigest()


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's digest is taken over: its JSON without ``sig``, keys sorted."""
    body = {k: v for k, v in entry.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(entry: dict[str, Any]) -> bytes:
    return hashlib.blake2b(canonical(entry), digest_size=32).digest()


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
        self.seq, self.last = -1, GENESIS
        self.pending: list[bytes] = []
        self._resume()

    def _resume(self) -> None:
        """Continue the chain from the last complete entry on disk. A line torn by a crash
        mid-write is cut off (it was never part of a flushed round)."""
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

    def append(self, kind: str, **data: Any) -> None:
        entry: dict[str, Any] = {
            "seq": self.seq + 1,
            "t": round(time.time(), 6),
            "kind": kind,
            "data": data,
            "prev": self.last.hex(),
        }
        mine = digest(entry)
        entry["sig"] = self.identity.sign(mine).hex()
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.pending.append(line.encode() + b"\n")
        self.seq, self.last = entry["seq"], mine

    def close_round(self, round: int, missed: list[str], eps_spent: float | None) -> None:
        """The round's entry (who was missing, ε spent after it), then one write and fsync
        for all of the round's entries; called after the round's checkpoint."""
        self.append("round", round=round, missed=missed, eps_spent=eps_spent)
        self.flush()

    def flush(self) -> None:
        """Write what is buffered, fsync it, then the signed head (atomically)."""
        if not self.pending:
            return
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(b"".join(self.pending))
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            sync_directory(self.path.parent)
        self.pending.clear()
        head = {
            "seq": self.seq,
            "digest": self.last.hex(),
            "sig": self.identity.sign(head_message(self.seq, self.last)).hex(),
        }
        # No fsync for the head: a crash may lose its last version (then the log is longer
        # than its head, which verify accepts) but never tears it.
        atomic_write(self.head_path, (json.dumps(head) + "\n").encode(), 0o600, durable=False)

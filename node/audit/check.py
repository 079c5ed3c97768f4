"""Checking audit logs: one log against its own chain and head, two against each other.

:func:`verify` names the first entry that is wrong and why: a line that is not a whole
entry (cut or edited), a sequence number out of place (an entry deleted, inserted or
moved), a link to the previous entry that does not hold (edited or reordered), a
signature that does not match the site's key (edited or forged), entries after the last
signature (appended by someone without the key), or a log that ends before its signed
head (truncated). Only the last entry of each write is signed (:mod:`node.audit.log`):
when a link breaks, the entry after it is still vouched for if the chain from it holds
up to a good signature, and then the entry before the break is the one that was edited.
A chain rewritten from an entry on without the key shows at the next signature, which
vouched for the entries since the signature before it: the verdict names that range.

:func:`cross_check` compares what one site logged as sent to a neighbour with what the
neighbour logged as received: a frame received that was never sent, or sent with other
contents, means one of the two logs lies.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.identity import public_key_from_peer_id
from crypto.identity import verify as verify_signature
from murmur.errors import MurmurError
from node.audit.log import FRAME_FIELDS, GENESIS, HEAD_FILE, digest, head_message

FIELDS: dict[str, type | tuple[type, ...]] = {
    "seq": int,
    "t": (int, float),
    "kind": str,
    "data": dict,
    "prev": str,
}


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: entries read, the site they claim, the first bad one."""

    entries: int
    peer_id: str | None
    first_bad: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every whole entry of a log (for ``show`` and ``cross-check``; ``verify`` checks)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _peer_of(entries: list[dict[str, Any]]) -> str | None:
    for entry in entries:
        if entry.get("kind") == "start" and isinstance(entry.get("data"), dict):
            peer = entry["data"].get("peer_id")
            return peer if isinstance(peer, str) else None
    return None


def verify(path: Path, peer_id: str | None = None, head: Path | None = None) -> Verdict:
    """Check ``path`` entry by entry against ``peer_id``'s key (default: the peer ID its
    first ``start`` entry names, which the caller should compare with the consortium's
    members) and against its head file (default: ``audit.head`` beside it)."""
    lines = path.read_bytes().splitlines()
    entries: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            return Verdict(n, None, n, f"line {n + 1} is not a whole entry (cut or edited)")
        if (
            not isinstance(entry, dict)
            or any(not isinstance(entry.get(k), kind) for k, kind in FIELDS.items())
            or not isinstance(entry.get("sig", ""), str)
        ):
            return Verdict(n, None, n, f"entry {n} lacks a field or has one of the wrong type")
        entries.append(entry)
    claimed = peer_id or _peer_of(entries)
    if claimed is None:
        return Verdict(len(entries), None, 0, "no start entry names the site, and no key given")
    try:
        key = public_key_from_peer_id(claimed)
    except (MurmurError, ValueError) as exc:
        return Verdict(len(entries), claimed, 0, f"bad peer ID {claimed!r}: {exc}")
    digests = [digest(entry) for entry in entries]
    head_path = head if head is not None else path.with_name(HEAD_FILE)
    since = 0  # the first entry no good signature has vouched for yet
    for n, entry in enumerate(entries):
        if entry["seq"] != n:
            return Verdict(
                len(entries),
                claimed,
                n,
                f"entry {n} carries sequence number {entry['seq']}: an entry was deleted, "
                "inserted or moved",
            )
        if entry["prev"] != (digests[n - 1] if n else GENESIS).hex():
            if n and "sig" not in entries[n - 1] and _vouched(key, entries, digests, n):
                return Verdict(
                    len(entries),
                    claimed,
                    n - 1,
                    f"entry {n - 1} is not the one entry {n} follows (edited)",
                )
            return Verdict(
                len(entries), claimed, n, f"entry {n} does not follow entry {n - 1} (edited)"
            )
        if "sig" in entry:
            if not _signed(key, digests[n], entry["sig"]):
                vouched = (
                    f", or one of entries {since} to {n - 1} it vouches for," if since < n else ""
                )
                return Verdict(
                    len(entries),
                    claimed,
                    n,
                    f"entry {n}'s signature is not {claimed}'s: entry {n}{vouched} was edited",
                )
            since = n + 1
    if head_path.exists():
        problem = _check_head(head_path, key, entries, digests)
        if problem:
            return Verdict(len(entries), claimed, len(entries), problem)
    unsigned = next((n for n in range(len(entries), 0, -1) if "sig" in entries[n - 1]), 0)
    if unsigned < len(entries):
        return Verdict(
            len(entries),
            claimed,
            unsigned,
            f"entries {unsigned} to {len(entries) - 1} are covered by no signature "
            "(appended without the site's key)",
        )
    return Verdict(len(entries), claimed)


def _signed(key: bytes, mine: bytes, sig: str) -> bool:
    try:
        verify_signature(key, mine, bytes.fromhex(sig))
    except (MurmurError, ValueError):
        return False
    return True


def _vouched(key: bytes, entries: list[dict[str, Any]], digests: list[bytes], n: int) -> bool:
    """Whether entry ``n`` is the site's: the chain from it holds up to a good signature."""
    for m in range(n, len(entries)):
        if m > n and entries[m]["prev"] != digests[m - 1].hex():
            return False
        if "sig" in entries[m]:
            return _signed(key, digests[m], entries[m]["sig"])
    return False


def _check_head(path: Path, key: bytes, entries: list[dict[str, Any]], digests: list[bytes]) -> str:
    try:
        head = json.loads(path.read_text())
        seq, recorded = int(head["seq"]), bytes.fromhex(head["digest"])
        verify_signature(key, head_message(seq, recorded), bytes.fromhex(head["sig"]))
    except (MurmurError, ValueError, KeyError, TypeError):
        return f"{path.name} is not a head signed by this site"
    if seq >= len(entries):
        return (
            f"truncated: the signed head names entry {seq}, the log ends at entry "
            f"{len(entries) - 1}"
        )
    if digests[seq] != recorded:
        return f"entry {seq} is not the one the signed head names (edited)"
    return ""


@dataclass(frozen=True)
class CrossCheck:
    """What one site logged as sent to another against what that one logged received,
    over the rounds both logs have finished."""

    matched: int
    sent_not_received: int  # lost on the way, or dropped from the receiver's log
    received_not_sent: int  # the receiver logs a frame the sender never sent: a lie
    beyond: int = 0  # frames of rounds the other log has not finished: not compared

    @property
    def ok(self) -> bool:
        return self.received_not_sent == 0


# A frame's fields and the types a well-formed one has (:func:`frames_of`).
_FRAME_TYPES = dict(zip(FRAME_FIELDS, (str, str, int, str, int, str), strict=True))


def frames_of(entry: object) -> list[dict[str, Any]]:
    """The frames an entry logs, each as {dir, peer, round, topic, bytes, digest}: the
    frames of a ``frames`` entry, or the one frame of a ``sent`` / ``received`` entry (a
    log written before a node batched them). None for other entries, and none for an
    item that is not shaped as a frame or holds a value of another type (``verify``
    judges the entry; this only reads it, and must not fail on what a log holds)."""
    if not isinstance(entry, dict) or not isinstance(data := entry.get("data"), dict):
        return []
    kind = entry.get("kind")
    if kind in ("sent", "received"):
        found = [{**data, "dir": kind}]
    elif kind == "frames" and isinstance(items := data.get("frames"), list):
        found = [
            dict(zip(FRAME_FIELDS, item, strict=True))
            for item in items
            if isinstance(item, list) and len(item) == len(FRAME_FIELDS)
        ]
    else:
        return []
    return [
        frame
        for frame in found
        if all(type(frame.get(name)) is kind_ for name, kind_ in _FRAME_TYPES.items())
    ]


def _finished(entries: list[dict[str, Any]]) -> float:
    """The rounds a log has finished: the frames of round r are all in it once its
    ``round`` entry for r + 1 is (none: every round counts). A node writes its log once
    a second and its checkpoint holds the rest, so a log read while its node runs, or
    after a crash it was not restarted from, ends a second's rounds (and the one under
    way) early without lying."""
    done = [e["data"].get("round") for e in entries if e.get("kind") == "round"]
    rounds = [r for r in done if isinstance(r, int)]
    return max(rounds) if rounds else float("inf")


def cross_check(sender_log: Path, receiver_log: Path) -> CrossCheck:
    sender, receiver = read_entries(sender_log), read_entries(receiver_log)
    a, b = _peer_of(sender), _peer_of(receiver)
    until = min(_finished(sender), _finished(receiver))

    def frames(entries: list[dict[str, Any]], kind: str, peer: str | None) -> Counter[Any]:
        return Counter(
            (f.get("round"), f.get("topic"), f.get("digest"))
            for e in entries
            for f in frames_of(e)
            if f.get("dir") == kind and f.get("peer") == peer
        )

    def compared(frames: Counter[Any]) -> Counter[Any]:
        return Counter({k: n for k, n in frames.items() if isinstance(k[0], int) and k[0] < until})

    sent_all, received_all = frames(sender, "sent", b), frames(receiver, "received", a)
    sent, received = compared(sent_all), compared(received_all)
    beyond = sum(sent_all.values()) + sum(received_all.values())
    beyond -= sum(sent.values()) + sum(received.values())
    matched = sum((sent & received).values())
    return CrossCheck(
        matched, sum((sent - received).values()), sum((received - sent).values()), beyond
    )


def describe(entry: dict[str, Any], frames: frozenset[str] | None = None) -> str:
    """An entry, readably (``murmur audit show``): one line, and for a ``frames`` entry
    one more line a frame (only those going ``frames``'s ways, "sent" or "received",
    where given)."""
    import datetime

    when = datetime.datetime.fromtimestamp(float(entry.get("t", 0)), datetime.UTC)
    raw = entry.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    lines = [f"{entry.get('seq'):>6}  {when:%Y-%m-%d %H:%M:%S.%f}  {entry.get('kind'):<11}"]
    if entry.get("kind") == "frames":
        shown = [f for f in frames_of(entry) if frames is None or f["dir"] in frames]
        items = data.get("frames")
        lines[0] += f" {len(shown)} of {len(items) if isinstance(items, list) else 0}"
        way = {"sent": "to", "received": "from"}
        lines += [
            f"{'':>36}{f['dir']:<9} {way.get(f['dir'], '?'):<4} {f['peer']}  "
            f"round={f['round']}  topic={f['topic']}  bytes={f['bytes']}  digest={f['digest']}"
            for f in shown
        ]
    else:
        lines[0] += " " + "  ".join(f"{k}={v}" for k, v in sorted(data.items()))
    return "\n".join(line.rstrip() for line in lines)

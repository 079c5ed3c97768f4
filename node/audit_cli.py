"""``murmur audit``: read, verify and cross-check the audit logs nodes keep.

``verify LOG`` exits 0 when every entry is in place, unedited and signed by the site, and
the log is not shorter than its signed head; otherwise 1, naming the first bad entry.
``show LOG`` prints it a line an entry (and a line a frame). ``cross-check LOG_A LOG_B``
compares, both ways, what each site logged as sent to the other with what the other
logged as received, and exits 1 when one logged receiving a frame the other never sent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.audit.check import cross_check, describe, frames_of, read_entries, verify
from node.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    check = sub.add_parser("verify", help="check a log's chain, signatures and head")
    check.add_argument("log", type=Path, help="a node's state/audit.log")
    check.add_argument(
        "--peer-key",
        metavar="PEER_ID",
        help="the site's peer ID (default: the one the log's start entry names; compare it "
        "with the consortium's members)",
    )
    check.add_argument("--head", type=Path, help="its audit.head (default: beside the log)")
    show = sub.add_parser("show", help="print a log, one line an entry and one a frame")
    show.add_argument("log", type=Path)
    show.add_argument(
        "--kind",
        action="append",
        help="only these kinds (repeatable); sent or received: those frames of the frames entries",
    )
    cross = sub.add_parser("cross-check", help="what A sent B against what B received, both ways")
    cross.add_argument("log_a", type=Path)
    cross.add_argument("log_b", type=Path)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: no such audit log")
    return path


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        verdict = verify(_existing(args.log), args.peer_key, args.head)
        if verdict.ok:
            print(f"{args.log}: {verdict.entries} entries, intact, signed by {verdict.peer_id}")
            return 0
        print(f"{args.log}: entry {verdict.first_bad}: {verdict.reason}")
        return 1
    if args.audit_command == "show":
        kinds = set(args.kind or ())
        ways = kinds & {"sent", "received"}  # frames, batched into ``frames`` entries
        for entry in read_entries(_existing(args.log)):
            if not kinds or entry.get("kind") in kinds:
                print(describe(entry))
            elif any(f.get("dir") in ways for f in frames_of(entry)):
                print(describe(entry, frozenset(ways)))
        return 0
    a, b = _existing(args.log_a), _existing(args.log_b)
    failed = False
    for sender, receiver in ((a, b), (b, a)):
        result = cross_check(sender, receiver)
        print(
            f"{sender} → {receiver}: {result.matched} frames match, "
            f"{result.sent_not_received} sent and not logged received (lost, or cut from "
            f"the receiver's log), {result.received_not_sent} logged received and never sent"
            + (
                f"; {result.beyond} of rounds one of the logs has not finished, not compared"
                if result.beyond
                else ""
            )
        )
        failed |= not result.ok
    return 1 if failed else 0

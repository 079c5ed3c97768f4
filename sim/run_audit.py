"""What each site's audit log of a run says, for the report (``node.audit.check``).

A log is checked against the peer ID of the site's own key (``site.key`` beside it) when
the run left one, as ``murmur audit verify --peer-key`` would be: the log's own ``start``
entry only claims a signer, and a log rewritten and re-signed under another key would
verify against its own claim. Frames sent and received are counted over the entries that
parse, up to the first line that does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from crypto.identity import load_key
from murmur.errors import MurmurError
from node.audit.check import Verdict, read_entries, verify


@dataclass(frozen=True)
class SiteAudit:
    """One audit log's row of the report."""

    site: str
    verdict: Verdict
    sent: int
    received: int
    note: str = ""  # why the log was checked against its own claim instead of site.key


def audit_logs(folder: Path) -> list[SiteAudit]:
    """Every ``folder/nodes/*/state/audit.log``, checked, in site order (node-2 < node-10)."""
    out = []
    for log in sorted((folder / "nodes").glob("*/state/audit.log"), key=_natural):
        site = log.parent.parent
        peer, note = None, ""
        if (site / "site.key").is_file():
            try:
                peer = load_key(site / "site.key").peer_id
            except MurmurError as exc:
                note = f"site.key unreadable ({exc}): checked against the log's own claim"
        entries = read_entries(log)
        out.append(
            SiteAudit(
                site.name,
                verify(log, peer),
                sum(e.get("kind") == "sent" for e in entries),
                sum(e.get("kind") == "received" for e in entries),
                note,
            )
        )
    return out


def _natural(log: Path) -> tuple[str, int]:
    name = log.parent.parent.name
    digits = re.search(r"(\d+)$", name)
    return (name[: digits.start()], int(digits.group(1))) if digits else (name, -1)

"""What each site's audit log of a run says, for the report (``node.audit.check``).

A log is checked against the peer ID of the site's own key (``site.key`` beside it) when
the run left one, as ``murmur audit verify --peer-key`` would be: the log's own ``start``
entry only claims a signer, and a log rewritten and re-signed under another key would
verify against its own claim. Frames sent and received are counted over the entries that
parse, up to the first line that does not.

Three layouts hold sites: a simulator run (``nodes/<site>/``), a consortium folder that
``murmur consortium init`` wrote and the sites ran in (``<site>/site.toml`` beside
``consortium.toml``), and one site's own folder (``site.toml``), which is what a site's
data-protection officer has. Each site's log is found where its ``site.toml`` puts its
state directory (``state/`` when there is no readable config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from crypto.identity import load_key
from murmur.errors import MurmurError
from node.audit.check import Verdict, frames_of, read_entries, verify
from node.audit.log import LOG_FILE
from node.config import load_config


@dataclass(frozen=True)
class SiteAudit:
    """One audit log's row of the report."""

    site: str
    verdict: Verdict
    sent: int
    received: int
    note: str = ""  # why the log was checked against its own claim instead of site.key


def site_folders(folder: Path) -> list[Path]:
    """The site folders of a run, a consortium folder or one site (module docstring)."""
    if (folder / "nodes").is_dir():
        return sorted((p for p in (folder / "nodes").iterdir() if p.is_dir()), key=_natural)
    if (folder / "site.toml").is_file():
        return [folder]
    return sorted((p.parent for p in folder.glob("*/site.toml")), key=_natural)


def _state_dir(site: Path) -> Path:
    try:
        return load_config(site / "site.toml").site.state_dir
    except (MurmurError, OSError, ValueError):
        return site / "state"  # no config left, or one that no longer loads


def audit_logs(folder: Path) -> list[SiteAudit]:
    """Every site's audit log under ``folder``, checked, in site order (node-2 < node-10)."""
    out = []
    for site in site_folders(folder):
        log = _state_dir(site) / LOG_FILE
        if not log.is_file():
            continue
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
                sum(f.get("dir") == "sent" for e in entries for f in frames_of(e)),
                sum(f.get("dir") == "received" for e in entries for f in frames_of(e)),
                note,
            )
        )
    return out


def _natural(site: Path) -> tuple[str, int]:
    name = site.name
    digits = re.search(r"(\d+)$", name)
    return (name[: digits.start()], int(digits.group(1))) if digits else (name, -1)

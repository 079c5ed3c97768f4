"""A site's privacy ledger: an append-only, fsynced record of the DP budget it spent.

The checkpoint holds the accountant, but a checkpoint can be lost (a disk replaced, a
state directory restored from an old backup) and a node that starts again from nothing
would spend its whole ε a second time on the same records. So every round that trains
with DP appends one line, *before* the round's noised update can leave the site:

``{"round": t, "history": [[σ, q, steps], ...]}`` (the accountant's whole history after
the round, so the last line alone is authoritative), in ``state/privacy.ledger``, mode
0600, fsynced (and its directory on creation).

On start: a checkpoint whose accountant has spent more than the ledger records means
the ledger was removed or truncated, and the node refuses to start. A ledger without a
checkpoint means the model state was lost but not the budget: the accountant continues
from the ledger's history (ε is not reset), and the model starts over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from murmur.files import sync_directory
from node.errors import ConfigError

LEDGER_FILE = "privacy.ledger"

History = list[tuple[float, float, int]]


def steps_of(history: History) -> int:
    return sum(int(n) for _, _, n in history)


class PrivacyLedger:
    """Append-only DP spending record of one site; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER_FILE

    def last(self) -> History | None:
        """The history of the last complete line, or None for no ledger. A torn last line
        (a crash mid-append) is ignored: its round's update never left the site."""
        if not self.path.exists():
            return None
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"privacy ledger {self.path} has mode {mode:04o}; run chmod 600")
        history: History | None = None
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
                history = [(float(s), float(q), int(n)) for s, q, n in entry["history"]]
            except (ValueError, KeyError, TypeError):
                continue
        return history

    def append(self, round: int, history: History) -> None:
        """Record the accountant's history after ``round``, durably, before release."""
        created = not self.path.exists()
        line = json.dumps({"round": round, "history": [list(h) for h in history]}) + "\n"
        if not created and not self._ends_with_newline():
            line = "\n" + line  # a crash tore the last line; ours must not join it
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            sync_directory(self.path.parent)

    def _ends_with_newline(self) -> bool:
        """Whether the ledger's last byte ends a line (read alone: the file only grows)."""
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def check(self, spent: History) -> History | None:
        """Reconcile with the checkpoint's accountant (``spent``, empty without one): the
        history to continue from, or None to keep the checkpoint's. Refuses a ledger that
        records less than the checkpoint spent."""
        recorded = self.last()
        if steps_of(spent) > steps_of(recorded or []):
            raise ConfigError(
                f"privacy ledger {self.path} is missing or records fewer DP steps "
                f"({steps_of(recorded or [])}) than this site's checkpoint has spent "
                f"({steps_of(spent)}): the record of the budget was lost or tampered with. "
                "Restore it from backup; the node will not start without it"
            )
        if recorded is not None and steps_of(recorded) > steps_of(spent):
            return recorded
        return None

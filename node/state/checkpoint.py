"""Atomic checkpoints: a node killed at any instant restarts from its last complete one.

Written to a temporary file in the same directory, fsynced, then renamed over the old
checkpoint (``os.replace`` is atomic on POSIX) and the directory fsynced: a reader sees
the old checkpoint or the new one, never a torn write.

A checkpoint holds the model, decrypted neighbourhood sums, pinned keys and the DP
generators' state, so it is created 0600 (never readable by others, not even briefly)
in a state directory kept at 0700.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from murmur.files import atomic_write
from node.errors import ConfigError


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700: it holds a site's secrets."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue(), 0o600)


def load(path: Path) -> dict[str, Any] | None:
    """The last checkpoint, or None when the node has never saved one."""
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint {path} is unreadable ({exc}); move it away to start over"
        ) from None
    return state


# What a checkpoint's top level holds: round, phase, incarnation, bytes_sent, and the
# parts' own snapshots under "model" (node.learner), "links" and "exchange".
LAYOUT = 2


def upgrade(saved: dict[str, Any], plaintext: bool) -> dict[str, Any]:
    """A checkpoint written before the parts kept their own snapshots (no ``layout``),
    in today's layout, so a site upgraded mid-run resumes where it stopped."""
    if saved.get("layout") == LAYOUT:
        return saved
    step = saved.get("step") or {}
    model = {k: saved.get(k) for k in ("x", "xhat", "s", "eps_spent", "trainer", "tracker")}
    model["guard"] = step.get("guard")
    own = {k: v for k, v in step.items() if k != "guard"}
    exchange = (own or None) if plaintext else saved.get("secure")
    kept = ("round", "phase", "incarnation", "links", "bytes_sent")
    rest: dict[str, Any] = {k: saved[k] for k in kept if k in saved}
    return {"layout": LAYOUT, **rest, "model": model, "exchange": exchange}

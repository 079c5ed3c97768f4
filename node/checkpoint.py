"""Atomic checkpoints: a node killed at any instant restarts from its last complete one.

Written to a temporary file in the same directory, fsynced, then renamed over the old
checkpoint (``os.replace`` is atomic on POSIX) and the directory fsynced: a reader sees
the old checkpoint or the new one, never a torn write.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from node.errors import ConfigError


def save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

"""Files that survive a crash whole: written aside, fsynced, renamed over, directory synced.

A node killed at any instant, or a config rewritten while a node reloads it, must leave
a reader the old file or the new one, never a torn one. ``os.replace`` is atomic on
POSIX; the fsyncs make the rename survive a power cut too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def sync_directory(path: Path) -> None:
    """fsync a directory, so that a file just created or renamed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its creation
    (0600 for anything secret: never readable by others, not even briefly). Without
    ``mode`` a file keeps the mode it had (an operator may have narrowed a config's),
    and a new one gets 0644. ``durable=False`` skips the fsyncs, for a file whose last
    version may be lost in a crash as long as it is never torn."""
    if mode is None:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # a stale tmp file may have had another mode
        handle.write(data)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        sync_directory(path.parent)

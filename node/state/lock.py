"""One writer per state directory: a running node holds ``state/node.lock``.

Two processes on one state directory would each append to the audit log's hash chain
and overwrite each other's checkpoints: the log would fork and a restart would resume a
state neither wrote. So a node takes an exclusive ``flock`` on the lock file for its
whole run, and the offline tools that write there (``murmur keys rotate`` / ``unpin``)
take the same lock, so they refuse to run beside a live node instead of racing it. The
kernel drops the lock when the process dies, however it dies: a killed node never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from node.errors import ConfigError

LOCK_FILE = "node.lock"


@contextlib.contextmanager
def state_lock(state_dir: Path, who: str = "a node") -> Iterator[None]:
    """Hold ``state_dir``'s lock, or fail at once naming the process that holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"{state_dir} is in use by a running node (pid {holder}); stop it before "
                f"running {who} on this state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock

"""Secret files (site keys, CKKS secret keys): mode 0600 from creation, refused when
group/other-readable, never silently overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from crypto.errors import KeyFileError
from murmur.files import sync_directory


def write_secret(path: Path, data: bytes, overwrite: bool = False, what: str = "key") -> None:
    """Create ``path`` with mode 0600 (never world-readable, not even briefly); an existing
    file is kept unless ``overwrite``: losing a site's key locks it out of the consortium."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a {what}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # a key lost to a power cut would lock the site out
    sync_directory(path.parent)


def read_secret(path: Path, hint: str = "") -> bytes:
    """Read a secret file, refusing one that group or others can read."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found{hint}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {mode:04o}: group/others can read it; run chmod 600 {path}"
        )
    return data

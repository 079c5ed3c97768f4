"""Device selection: the GPU when there is one, mixed precision only on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; an explicit name is honoured or refused clearly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from node.errors import ConfigError

        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use 'auto'")
    return device


@contextlib.contextmanager
def autocast_for(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield

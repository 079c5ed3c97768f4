"""Frames on a libp2p stream: progress deadlines on reads and writes, dial backoff."""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio
from libp2p.abc import (
    INetStream,
)

# 1.1: secure-aggregation receipts, contributions and sums carry the receiver's basis, and
# update frames cap shared-index items; a 1.0 peer is refused at stream negotiation
# rather than having its frames refused one by one as malformed.

CHUNK_BYTES = 1 << 20
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 5.0


@dataclass
class Backoff:
    delay: float = 0.0
    next_try: float = 0.0

    def failed(self) -> None:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, 2 * self.delay))
        self.next_try = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.next_try = 0.0


async def read_exactly(stream: INetStream, size: int, timeout_s: float) -> bytes:
    """Read ``size`` bytes, or fewer if the stream ends or stalls: each chunk must come
    within ``timeout_s`` (a progress deadline, so a large body on a slow link arrives
    while a stalled one is dropped). The caller checks the length; nothing of an earlier
    read can be returned."""
    chunks = []
    remaining = size
    while remaining:
        chunk = b""
        with trio.move_on_after(timeout_s):
            chunk = await stream.read(min(remaining, CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def write_all(stream: INetStream, data: bytes, timeout_s: float) -> None:
    """Write ``data`` in chunks, each within ``timeout_s`` (progress, not total, deadline)."""
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        with trio.fail_after(timeout_s):
            await stream.write(bytes(view[start : start + CHUNK_BYTES]))

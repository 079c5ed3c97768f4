"""Exact msgpack encoded sizes, so that byte counts come from the format, not estimates.

The simulator counts the bytes of every frame a node would send without building and
signing tens of thousands of frames per run: :func:`node.wire.update.payload_size` and
:func:`node.wire.frames.frame_size` add these up along the same structure the encoders write,
and a property test pins them to ``len()`` of the real encodings. Each function takes a
Python int or a NumPy integer array (one size per element), so a round's links are sized
at once.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

N = TypeVar("N", int, NDArray[np.int64])


def _select(value: N, bounds: list[tuple[int, int]], last: int) -> N:
    """The size of the first (limit, size) whose limit ``value`` does not exceed."""
    if isinstance(value, np.ndarray):
        out = np.full(value.shape, last, dtype=np.int64)
        for limit, size in reversed(bounds):
            out = np.where(value <= limit, size, out)
        return out
    for limit, size in bounds:
        if value <= limit:
            return size
    return last


def int_size(value: N) -> N:
    """Bytes msgpack uses for an integer (fixint, int8..int64, uint8..uint64)."""
    positive = [(127, 1), (255, 2), (65535, 3), (2**32 - 1, 5)]
    negative = [(31, 1), (127, 2), (2**15 - 1, 3), (2**31 - 1, 5)]  # of -value - 1
    if isinstance(value, np.ndarray):
        return np.where(
            value < 0, _select(-value - 1, negative, 9), _select(value, positive, 9)
        ).astype(np.int64)
    if value < 0:
        return _select(-value - 1, negative, 9)
    return _select(value, positive, 9)


def bin_size(length: N) -> N:
    """Bytes of a msgpack bin of ``length`` bytes, header included."""
    return length + _select(length, [(255, 2), (65535, 3)], 5)


def str_size(length: N) -> N:
    """Bytes of a msgpack str of ``length`` UTF-8 bytes, header included."""
    return length + _select(length, [(31, 1), (255, 2), (65535, 3)], 5)


def array_header(length: N) -> N:
    """Bytes of a msgpack array header for ``length`` elements."""
    return _select(length, [(15, 1), (65535, 3)], 5)


def map_header(length: N) -> N:
    """Bytes of a msgpack map header for ``length`` pairs."""
    return _select(length, [(15, 1), (65535, 3)], 5)


NIL = 1
BOOL = 1

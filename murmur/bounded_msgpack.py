"""msgpack decoding with limits, for bytes that come from a peer.

Every decoder of untrusted bytes (frames, update payloads, secure-aggregation payloads,
ciphertext envelopes) goes through :func:`unpack`: no extension types, caller-set bounds
on string, binary, array and map sizes (so a small frame cannot claim a huge allocation),
and every failure of the library becomes the caller's own rejection error, with ``what``
naming the field, so a bad peer costs one counted rejection and nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack

from murmur.errors import MurmurError


def unpack(data: bytes, error: type[MurmurError], what: str, **limits: int | bool) -> Any:
    """``data`` decoded under ``limits`` (msgpack.unpackb keywords: max_array_len, …);
    raises ``error`` naming ``what`` when it is not well-formed msgpack within them."""
    try:
        return msgpack.unpackb(data, raw=False, max_ext_len=0, **limits)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise error(f"{what} is not msgpack: {type(exc).__name__}") from None

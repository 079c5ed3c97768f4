"""The libp2p transport: the only package of Murmur that imports libp2p or trio.

py-libp2p is trio-based; the node is asyncio. The host runs in its own thread under
``trio.run``; the asyncio side hands work over with ``TrioToken.run_sync_soon`` (thread
safe, never blocks the event loop) and gets results back through
``loop.call_soon_threadsafe``. So the asyncio side never waits on trio except through a
future.

Security: Noise only (no plaintext, TLS or secio fallback is offered), Yamux, and the
consortium allowlist enforced right after the Noise handshake, before any stream opens:
a peer not in the address book is disconnected there and counted. Frames travel on one
long-lived stream per peer, each a 4-byte length and the body; the length is checked
against the limit before a byte of the body is read. Every await that waits on the
network runs under a timeout. Failed dials back off exponentially (0.25 s doubling to
5 s) and a background task redials known peers, so a restarted peer is found again;
addresses come from our own address book on every dial (libp2p's peerstore expires them).

Yamux data frames are sent up to 256 KiB instead of py-libp2p's 64 KiB default: a 1 MiB
update then costs 4 frames' worth of window and lock bookkeeping instead of 16, which
roughly doubles loopback throughput (``make bench``). It stays within the Yamux spec:
a frame is bounded by the receiver's window, which the sender honours, and go-yamux
exposes the same knob as ``MaxMessageSize``. Receivers need no change.

Modules: :mod:`.transport` (:class:`P2PTransport`), :mod:`.muxer` (bounded Yamux),
:mod:`.security` (Noise and the allowlist), :mod:`.streams` (reads, writes, backoff).
"""

from node.transport.p2p.muxer import MAX_CONNECTIONS_PER_PEER, YAMUX_FRAME_BYTES
from node.transport.p2p.transport import P2PTransport

__all__ = ["MAX_CONNECTIONS_PER_PEER", "YAMUX_FRAME_BYTES", "P2PTransport"]

"""Yamux bounded to the windows it grants, with larger data frames (see the package)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libp2p.abc import (
    IMuxedConn,
    INetStream,
    ISecureConn,
)
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux import yamux

YAMUX_FRAME_BYTES = 256 * 1024


def large_yamux_frames() -> None:
    """Send Yamux data frames of up to :data:`YAMUX_FRAME_BYTES` (see the module docstring).

    py-libp2p reads its frame size from a module constant, with no per-connection knob, so
    this is set for the process when the first transport starts, never on import: a
    process that imports this module without running a node keeps the library's value."""
    yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_BYTES


# Unread bytes one connection may hold in Yamux: the one frame stream an honest peer
# uses, at its largest window, and a few fresh streams (identify, a replaced stream).
CONNECTION_BUFFER_BYTES = yamux.MAX_WINDOW_SIZE + 4 * yamux.DEFAULT_WINDOW_SIZE
MAX_CONNECTIONS_PER_PEER = 2  # one each way covers an honest pair dialling each other


class WindowExceededError(ConnectionError):
    """A peer sent more on a Yamux stream than the receive window we granted it (or more
    than one connection may hold unread). py-libp2p catches it per stream and reads on,
    so the buffer also flags the connection, and :class:`BoundedYamux` ends it, as
    go-yamux does on this protocol error."""


class WindowedBuffer(bytearray):
    """One stream's receive buffer that refuses data beyond the stream's open window.

    py-libp2p's Yamux logs a peer that overruns the window and buffers the data anyway,
    so a member that ignores flow control could grow our memory without bound while our
    reader applies backpressure. An honest sender never has more in flight than the
    window we granted (we raise it before we announce it), so this refuses only peers
    that break the protocol. The connection's streams together may also hold at most one
    fully grown window plus a few initial ones (``CONNECTION_BUFFER_BYTES``): a peer
    that opens many streams and never lets them be read cannot park more than that."""

    conn: BoundedYamux
    stream_id: int

    def extend(self, data: Any) -> None:
        stream = self.conn.streams.get(self.stream_id)
        held = sum(len(b) for b in self.conn.stream_buffers.values())
        if stream is not None and len(data) > stream.recv_window:
            problem = f"{len(data)} bytes on stream {self.stream_id} past its window"
        elif held + len(data) > CONNECTION_BUFFER_BYTES:
            problem = f"{held + len(data)} bytes unread on one connection"
        else:
            super().extend(data)
            return
        self.conn.on_window_exceeded(str(self.conn.peer_id))
        # py-libp2p catches errors of a plain DATA frame per stream and reads on, so the
        # connection is ended here: its read loop stops, and BoundedYamux closes it.
        self.conn.overrun = True
        self.conn.event_shutting_down.set()
        raise WindowExceededError(f"{self.conn.peer_id} sent {problem}")


class WindowedBuffers(dict[int, bytearray]):
    """A connection's stream buffers, each a :class:`WindowedBuffer`."""

    def __init__(self, conn: BoundedYamux) -> None:
        super().__init__()
        self.conn = conn

    def __setitem__(self, stream_id: int, value: bytearray) -> None:
        buffer = WindowedBuffer(value)
        buffer.conn, buffer.stream_id = self.conn, stream_id
        super().__setitem__(stream_id, buffer)


def drop_buffer(stream: INetStream) -> None:
    """Free what Yamux still buffers for a stream we reset (it would otherwise wait for
    py-libp2p's sweep and count against the connection's cap meanwhile)."""
    muxed = getattr(stream, "muxed_stream", None)
    conn = getattr(muxed, "conn", None)
    buffers = getattr(conn, "stream_buffers", None)
    if isinstance(buffers, dict):
        buffer = buffers.get(getattr(muxed, "stream_id", -1))
        if buffer is not None:
            del buffer[:]


class BoundedYamux(yamux.Yamux):
    """Yamux whose receive buffers hold no more than the windows granted (see above)."""

    def __init__(self, *args: Any, on_exceeded: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_window_exceeded = on_exceeded
        self.overrun = False  # set by a buffer that refused a peer's data
        self.stream_buffers = WindowedBuffers(self)

    async def handle_incoming(self) -> None:
        await super().handle_incoming()
        if self.overrun and not self.event_closed.is_set():
            await self._cleanup_on_error()


class YamuxOnly(MuxerMultistream):
    """Muxer negotiation offering Yamux alone, built as :class:`BoundedYamux`.

    py-libp2p builds its own ``Yamux`` for the Yamux protocol whatever class it is given,
    and would also offer Mplex, which has no flow control at all; this replaces the
    negotiation on our host only (no global patch)."""

    def __init__(self, on_exceeded: Callable[[str], None]) -> None:
        super().__init__({TProtocol(yamux.PROTOCOL_ID): BoundedYamux})
        self.on_exceeded = on_exceeded

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, _ = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)

        async def on_close() -> None:
            pass

        muxed = BoundedYamux(
            conn,
            peer_id,
            is_initiator=conn.is_initiator,
            on_close=on_close,
            on_exceeded=self.on_exceeded,
        )
        return self._annotate_connection(muxed, conn, protocol)

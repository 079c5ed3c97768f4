"""The libp2p transport: the only module of Murmur that imports libp2p or trio.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import (
    IHost,
    IMuxedConn,
    INetStream,
    IRawConnection,
    ISecureConn,
    ISecureTransport,
)
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux import yamux

from crypto.identity import SiteIdentity
from node.errors import (
    FrameError,
    PeerUnreachableError,
    TransportClosedError,
)
from node.transport.base import Received, Transport
from node.wire.frames import DEFAULT_MAX_FRAME_BYTES, PREFIX_BYTES, check_length, length_prefix

YAMUX_FRAME_BYTES = 256 * 1024


def _large_yamux_frames() -> None:
    """Send Yamux data frames of up to :data:`YAMUX_FRAME_BYTES` (see the module docstring).

    py-libp2p reads its frame size from a module constant, with no per-connection knob, so
    this is set for the process when the first transport starts, never on import: a
    process that imports this module without running a node keeps the library's value."""
    yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_BYTES


# Unread bytes one connection may hold in Yamux: the one frame stream an honest peer
# uses, at its largest window, and a few fresh streams (identify, a replaced stream).
CONNECTION_BUFFER_BYTES = yamux.MAX_WINDOW_SIZE + 4 * yamux.DEFAULT_WINDOW_SIZE
MAX_CONNECTIONS_PER_PEER = 2  # one each way covers an honest pair dialling each other
# 1.1: secure-aggregation receipts, contributions and sums carry the receiver's basis, and
# update frames cap shared-index items; a 1.0 peer is refused at stream negotiation
# rather than having its frames refused one by one as malformed.
PROTOCOL = TProtocol("/murmur/frames/1.1.0")
IDLE_READ_S = 600.0
BACKPRESSURE_POLL_S = 0.005
CHUNK_BYTES = 1 << 20
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 5.0


class WindowExceededError(ConnectionError):
    """A peer sent more on a Yamux stream than the receive window we granted it (or more
    than one connection may hold unread). py-libp2p catches it per stream and reads on,
    so the buffer also flags the connection, and :class:`_BoundedYamux` ends it, as
    go-yamux does on this protocol error."""


class _WindowedBuffer(bytearray):
    """One stream's receive buffer that refuses data beyond the stream's open window.

    py-libp2p's Yamux logs a peer that overruns the window and buffers the data anyway,
    so a member that ignores flow control could grow our memory without bound while our
    reader applies backpressure. An honest sender never has more in flight than the
    window we granted (we raise it before we announce it), so this refuses only peers
    that break the protocol. The connection's streams together may also hold at most one
    fully grown window plus a few initial ones (``CONNECTION_BUFFER_BYTES``): a peer
    that opens many streams and never lets them be read cannot park more than that."""

    conn: _BoundedYamux
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
        # connection is ended here: its read loop stops, and _BoundedYamux closes it.
        self.conn.overrun = True
        self.conn.event_shutting_down.set()
        raise WindowExceededError(f"{self.conn.peer_id} sent {problem}")


class _WindowedBuffers(dict[int, bytearray]):
    """A connection's stream buffers, each a :class:`_WindowedBuffer`."""

    def __init__(self, conn: _BoundedYamux) -> None:
        super().__init__()
        self.conn = conn

    def __setitem__(self, stream_id: int, value: bytearray) -> None:
        buffer = _WindowedBuffer(value)
        buffer.conn, buffer.stream_id = self.conn, stream_id
        super().__setitem__(stream_id, buffer)


def _drop_buffer(stream: INetStream) -> None:
    """Free what Yamux still buffers for a stream we reset (it would otherwise wait for
    py-libp2p's sweep and count against the connection's cap meanwhile)."""
    muxed = getattr(stream, "muxed_stream", None)
    conn = getattr(muxed, "conn", None)
    buffers = getattr(conn, "stream_buffers", None)
    if isinstance(buffers, dict):
        buffer = buffers.get(getattr(muxed, "stream_id", -1))
        if buffer is not None:
            del buffer[:]


class _BoundedYamux(yamux.Yamux):
    """Yamux whose receive buffers hold no more than the windows granted (see above)."""

    def __init__(self, *args: Any, on_exceeded: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_window_exceeded = on_exceeded
        self.overrun = False  # set by a buffer that refused a peer's data
        self.stream_buffers = _WindowedBuffers(self)

    async def handle_incoming(self) -> None:
        await super().handle_incoming()
        if self.overrun and not self.event_closed.is_set():
            await self._cleanup_on_error()


class _YamuxOnly(MuxerMultistream):
    """Muxer negotiation offering Yamux alone, built as :class:`_BoundedYamux`.

    py-libp2p builds its own ``Yamux`` for the Yamux protocol whatever class it is given,
    and would also offer Mplex, which has no flow control at all; this replaces the
    negotiation on our host only (no global patch)."""

    def __init__(self, on_exceeded: Callable[[str], None]) -> None:
        super().__init__({TProtocol(yamux.PROTOCOL_ID): _BoundedYamux})
        self.on_exceeded = on_exceeded

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, _ = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)

        async def on_close() -> None:
            pass

        muxed = _BoundedYamux(
            conn,
            peer_id,
            is_initiator=conn.is_initiator,
            on_close=on_close,
            on_exceeded=self.on_exceeded,
        )
        return self._annotate_connection(muxed, conn, protocol)


class _AllowlistSecurity(ISecureTransport):
    """Noise, then the allowlist: wraps the Noise transport, never replaces its checks."""

    def __init__(
        self,
        inner: ISecureTransport,
        allowed: Callable[[str], bool],
        refused: Callable[[str], None],
        make_room: Callable[[ID], Awaitable[None]],
    ):
        self.inner = inner
        self.allowed = allowed
        self.refused = refused  # counts a refusal under its reason
        self.make_room = make_room  # closes a peer's oldest connections over the limit

    async def _admit(self, conn: ISecureConn, inbound: bool) -> ISecureConn:
        remote = conn.get_remote_peer()
        peer = str(remote)
        if not self.allowed(peer):
            self.refused("refused_handshake")
            await conn.close()
            raise HandshakeFailure(f"peer {peer} is not in the consortium allowlist")
        if inbound:
            await self.make_room(remote)
        return conn

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._admit(await self.inner.secure_inbound(conn), inbound=True)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._admit(await self.inner.secure_outbound(conn, peer_id), inbound=False)


@dataclass
class _Backoff:
    delay: float = 0.0
    next_try: float = 0.0

    def failed(self) -> None:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, 2 * self.delay))
        self.next_try = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.next_try = 0.0


async def _read_exactly(stream: INetStream, size: int, timeout_s: float) -> bytes:
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


async def _write_all(stream: INetStream, data: bytes, timeout_s: float) -> None:
    """Write ``data`` in chunks, each within ``timeout_s`` (progress, not total, deadline)."""
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        with trio.fail_after(timeout_s):
            await stream.write(bytes(view[start : start + CHUNK_BYTES]))


class P2PTransport(Transport):
    """Frames over libp2p streams; see the module docstring for the security rules."""

    def __init__(
        self,
        identity: SiteIdentity,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        timeout_s: float = 10.0,
        redial_s: float = 2.0,
    ) -> None:
        super().__init__(identity, max_frame_bytes, timeout_s)
        self._listen = listen
        self._address = ""
        self.redial_s = redial_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._host: IHost | None = None
        self._streams: dict[str, INetStream] = {}
        self._inbound: dict[str, INetStream] = {}  # each peer's frame stream to us
        self._locks: dict[str, trio.Lock] = {}
        self._backoff: dict[str, _Backoff] = {}

    @property
    def listen_addr(self) -> str:
        return self._address

    # -- asyncio side -------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise TransportClosedError("transport was closed")
        if self._thread is not None:
            return
        _large_yamux_frames()
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[str] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run_trio, args=(ready,), name=f"libp2p-{self.peer_id[-6:]}", daemon=True
        )
        self._thread.start()
        try:
            self._address = await asyncio.wait_for(ready, self.timeout_s + 20)
        except TimeoutError:
            raise PeerUnreachableError(f"libp2p did not start on {self._listen}") from None

    def set_peers(self, peers: Mapping[str, str]) -> None:
        removed = set(self._peers) - set(peers)
        super().set_peers(peers)
        for peer in removed:
            self._call_in_trio(self._disconnect, peer)

    async def send(self, peer: str, body: bytes) -> None:
        address = self._address_for(peer, body)
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._call_in_trio(self._send, peer, address, body, done)
        # The trio side bounds every step (connect, each chunk); this is a backstop sized to
        # the body, so a large frame on a slow link is not cut off by a fixed deadline.
        chunks = 1 + (len(body) + PREFIX_BYTES) // CHUNK_BYTES
        try:
            await asyncio.wait_for(done, self.timeout_s * (chunks + 2) + 5)
        except TimeoutError:
            raise PeerUnreachableError(f"{peer}: send did not finish in time") from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.timeout_s)
        self._end_incoming()

    def _call_in_trio(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._token is None or self._nursery is None:
            raise TransportClosedError("transport is not running")
        nursery = self._nursery
        try:
            self._token.run_sync_soon(lambda: nursery.start_soon(fn, *args))
        except trio.RunFinishedError:
            raise TransportClosedError("transport was closed") from None

    def _resolve(self, future: asyncio.Future[Any], value: Any = None, error: Any = None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        assert self._loop is not None
        # A RuntimeError means the event loop is gone: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _deliver(self, item: Received) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # -- trio side ----------------------------------------------------------------------

    def _run_trio(self, ready: asyncio.Future[str]) -> None:
        try:
            trio.run(self._main, ready)
        except BaseException as exc:
            self._resolve(ready, error=PeerUnreachableError(f"libp2p failed to start: {exc}"))

    def _refused(self, reason: str) -> None:
        self.rejected[reason] += 1

    async def _make_room(self, peer: ID) -> None:
        """Before admitting a peer's new connection, close its oldest beyond
        MAX_CONNECTIONS_PER_PEER − 1. Each connection may hold CONNECTION_BUFFER_BYTES
        unread, so a member opening many would multiply that; the newest wins, so an
        honest peer whose old connection died unnoticed still gets in."""
        if self._host is None:
            return
        held = list(self._host.get_network().get_connections(peer))
        for old in held[: max(len(held) - MAX_CONNECTIONS_PER_PEER + 1, 0)]:
            self.rejected["connection_replaced"] += 1
            with trio.move_on_after(self.timeout_s):
                await old.close()

    async def _main(self, ready: asyncio.Future[str]) -> None:
        key_pair = create_new_key_pair(self.identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        security = _AllowlistSecurity(
            noise, lambda peer: peer in self._peers, self._refused, self._make_room
        )
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: security},
            muxer_opt={TProtocol(yamux.PROTOCOL_ID): _BoundedYamux},
        )
        muxers = _YamuxOnly(lambda peer: self._refused("window_exceeded"))
        host.get_network().upgrader.muxer_multistream = muxers  # type: ignore[attr-defined]
        self._host = host
        self._stop = trio.Event()
        try:
            listen = multiaddr.Multiaddr(self._listen)
        except Exception as exc:
            raise PeerUnreachableError(f"bad listen address {self._listen!r}: {exc}") from None
        async with host.run([listen]):
            host.set_stream_handler(PROTOCOL, self._handle)
            addrs = [str(a) for a in host.get_addrs()]
            if not addrs:
                raise PeerUnreachableError(f"libp2p is not listening on {self._listen}")
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                self._resolve(ready, addrs[0].split("/p2p/")[0])
                nursery.start_soon(self._redial_loop)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
            # Close every connection before host.run exits, so no socket is left open.
            with trio.move_on_after(self.timeout_s):
                for stream in list(self._streams.values()):
                    await stream.reset()
                network = host.get_network()
                for peer_id in list(network.get_connections_map()):
                    await network.close_peer(peer_id)

    async def _disconnect(self, peer: str) -> None:
        stream = self._streams.pop(peer, None)
        with trio.move_on_after(self.timeout_s):
            if stream is not None:
                await stream.reset()
            if self._host is not None:
                await self._host.get_network().close_peer(ID.from_base58(peer))

    async def _stream(self, peer: str, address: str) -> INetStream:
        stream = self._streams.get(peer)
        if stream is not None:
            return stream
        assert self._host is not None
        peer_id = ID.from_base58(peer)
        if not self._host.get_network().get_connections(peer_id):
            await self._host.connect(PeerInfo(peer_id, [multiaddr.Multiaddr(address)]))
        stream = await self._host.new_stream(peer_id, [PROTOCOL])
        self._streams[peer] = stream
        return stream

    async def _send(self, peer: str, address: str, body: bytes, done: asyncio.Future[None]) -> None:
        backoff = self._backoff.setdefault(peer, _Backoff())
        lock = self._locks.setdefault(peer, trio.Lock())
        error: Exception | None = None
        async with lock:
            wait = backoff.next_try - time.monotonic()
            if wait > 0:
                error = PeerUnreachableError(f"{peer} unreachable; retrying in {wait:.1f} s")
            else:
                error = await self._write(peer, address, length_prefix(body) + body)
                if error is None:
                    backoff.succeeded()
                else:
                    backoff.failed()
        self._resolve(done, error=error)

    async def _write(self, peer: str, address: str, data: bytes) -> Exception | None:
        """Write on the peer's stream; a stale cached stream gets one fresh retry."""
        for attempt in (0, 1):
            fresh = peer not in self._streams
            try:
                with trio.fail_after(self.timeout_s):
                    stream = await self._stream(peer, address)
                await _write_all(stream, data, self.timeout_s)
                return None
            except trio.TooSlowError:
                self._streams.pop(peer, None)
                return PeerUnreachableError(f"{peer}: no write within {self.timeout_s:g} s")
            except Exception as exc:
                self._streams.pop(peer, None)
                if fresh or attempt == 1:
                    return PeerUnreachableError(f"{peer} at {address}: {type(exc).__name__}: {exc}")
        return None  # pragma: no cover

    async def _redial_loop(self) -> None:
        """Keep a connection to every known peer, so a restarted peer is found again."""
        assert self._host is not None
        while True:
            await trio.sleep(self.redial_s)
            for peer, address in list(self._peers.items()):
                backoff = self._backoff.setdefault(peer, _Backoff())
                peer_id = ID.from_base58(peer)
                if self._host.get_network().get_connections(peer_id):
                    continue
                if backoff.next_try > time.monotonic():
                    continue
                self._streams.pop(peer, None)
                try:
                    with trio.fail_after(self.timeout_s):
                        await self._host.connect(PeerInfo(peer_id, [multiaddr.Multiaddr(address)]))
                    backoff.succeeded()
                except Exception:
                    backoff.failed()

    async def _handle(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        # One inbound frame stream per peer: an honest peer opens a new one only after its
        # old one failed, so the old one is reset (a member opening many cannot make us
        # read, or hold buffers for, more than one).
        previous, self._inbound[peer] = self._inbound.get(peer), stream
        if previous is not None:
            with trio.move_on_after(1):
                await previous.reset()
            _drop_buffer(previous)
        try:
            while peer in self._peers:
                prefix = await _read_exactly(stream, PREFIX_BYTES, IDLE_READ_S)
                if not prefix:
                    break
                try:
                    size = check_length(prefix, self.max_frame_bytes)
                except FrameError as exc:
                    self.rejected[exc.reason] += 1
                    break
                # Backpressure: this peer's unconsumed frames hold their share of memory,
                # so its stream is not read until ours consumes them (transport docs).
                while not self._reserve(peer, size):
                    await trio.sleep(BACKPRESSURE_POLL_S)
                try:
                    body = await _read_exactly(stream, size, self.timeout_s)
                except BaseException:
                    self._release(peer, size)
                    raise
                if len(body) != size:
                    self._release(peer, size)
                    self.rejected["truncated"] += 1
                    break
                self._deliver(Received(peer, body))
                # It is up (a restarted site, say): our next send need not sit out a backoff.
                self._backoff.pop(peer, None)
        except Exception:
            if self._inbound.get(peer) is stream:  # not one we reset for its successor
                self.rejected["stream_error"] += 1
        finally:
            if self._inbound.get(peer) is stream:
                del self._inbound[peer]
            with trio.move_on_after(1):
                await stream.reset()

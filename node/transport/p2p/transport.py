"""The libp2p :class:`P2PTransport` (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import (
    IHost,
    INetStream,
)
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux

from crypto.identity import SiteIdentity
from node.errors import (
    FrameError,
    PeerUnreachableError,
    TransportClosedError,
)
from node.transport.base import Received, Transport
from node.transport.p2p.muxer import (
    MAX_CONNECTIONS_PER_PEER,
    BoundedYamux,
    YamuxOnly,
    drop_buffer,
    large_yamux_frames,
)
from node.transport.p2p.security import AllowlistSecurity
from node.transport.p2p.streams import CHUNK_BYTES, Backoff, read_exactly, write_all
from node.wire.frames import DEFAULT_MAX_FRAME_BYTES, PREFIX_BYTES, check_length, length_prefix

# 1.1: secure-aggregation receipts, contributions and sums carry the receiver's basis, and
# update frames cap shared-index items; a 1.0 peer is refused at stream negotiation
# rather than having its frames refused one by one as malformed.
PROTOCOL = TProtocol("/murmur/frames/1.1.0")
IDLE_READ_S = 600.0
BACKPRESSURE_POLL_S = 0.005


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
        self._backoff: dict[str, Backoff] = {}

    @property
    def listen_addr(self) -> str:
        return self._address

    # -- asyncio side -------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise TransportClosedError("transport was closed")
        if self._thread is not None:
            return
        large_yamux_frames()
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
        security = AllowlistSecurity(
            noise, lambda peer: peer in self._peers, self._refused, self._make_room
        )
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: security},
            muxer_opt={TProtocol(yamux.PROTOCOL_ID): BoundedYamux},
        )
        muxers = YamuxOnly(lambda peer: self._refused("window_exceeded"))
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
        backoff = self._backoff.setdefault(peer, Backoff())
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
                await write_all(stream, data, self.timeout_s)
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
                backoff = self._backoff.setdefault(peer, Backoff())
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
            drop_buffer(previous)
        try:
            while peer in self._peers:
                prefix = await read_exactly(stream, PREFIX_BYTES, IDLE_READ_S)
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
                    body = await read_exactly(stream, size, self.timeout_s)
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

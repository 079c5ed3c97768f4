"""In-process transport for fast tests and the in-process simulator: same rules, no sockets.

A :class:`MemoryNetwork` is the shared medium: transports register their address on
``start()`` and deliver straight into the receiver's queue. A receiver whose allowlist
lacks the sender refuses it, as the libp2p transport does during the Noise handshake.
"""

from __future__ import annotations

import asyncio
import itertools

from crypto.identity import SiteIdentity
from node.errors import (
    PeerUnreachableError,
    TransportClosedError,
)
from node.transport.base import Received, Transport
from node.wire.frames import DEFAULT_MAX_FRAME_BYTES


class MemoryNetwork:
    """The address registry shared by the memory transports of one test or simulation."""

    def __init__(self) -> None:
        self.listeners: dict[str, MemoryTransport] = {}
        self._ids = itertools.count()

    def new_address(self) -> str:
        return f"/memory/{next(self._ids)}"


class MemoryTransport(Transport):
    def __init__(
        self,
        network: MemoryNetwork,
        identity: SiteIdentity,
        address: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(identity, max_frame_bytes, timeout_s)
        self.network = network
        self._address = address or network.new_address()
        self._started = False

    @property
    def listen_addr(self) -> str:
        return self._address

    async def start(self) -> None:
        if self._closed:
            raise TransportClosedError("transport was closed")
        current = self.network.listeners.get(self._address)
        if current is not None and current is not self and not current._closed:
            raise PeerUnreachableError(f"address {self._address} is already in use")
        self.network.listeners[self._address] = self
        self._started = True

    async def send(self, peer: str, body: bytes) -> None:
        address = self._address_for(peer, body)
        target = self.network.listeners.get(address)
        if target is None or target._closed or target.peer_id != peer:
            raise PeerUnreachableError(f"nothing of {peer} listens at {address}")
        if self.peer_id not in target._peers:
            target.rejected["refused_handshake"] += 1
            raise PeerUnreachableError(f"{peer} refused the connection (not in its allowlist)")
        if len(body) > target.max_frame_bytes:
            target.rejected["oversized"] += 1
            raise PeerUnreachableError(f"{peer} reset the stream: frame over its size limit")
        # Backpressure: wait while the receiver holds its share of our unconsumed frames.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout_s
        while not target._reserve(self.peer_id, len(body)):
            if loop.time() > give_up or target._closed:
                raise PeerUnreachableError(f"{peer} read nothing within {self.timeout_s:g} s")
            await asyncio.sleep(0.002)
        target._queue.put_nowait(Received(self.peer_id, bytes(body)))
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.network.listeners.get(self._address) is self:
            del self.network.listeners[self._address]
        self._end_incoming()

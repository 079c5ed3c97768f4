"""The ``Transport`` interface: how a node moves opaque frame bodies to its peers.

Exact rules, which every implementation meets (``tests/transport_kit.py`` checks them):

- ``await start()`` begins listening; ``listen_addr`` is then the address to give peers.
- ``set_peers({peer_id: address})`` replaces the address book, which is also the
  allowlist: a peer missing from it can neither be sent to nor deliver anything (its
  connection is refused during the handshake).
- ``await send(peer, body)`` returns once the body was handed to the peer's connection,
  in order with earlier sends to that peer. It raises ``OversizedFrameError`` for a body
  over ``max_frame_bytes`` (nothing is sent), ``UnknownPeerError`` for a peer not in the
  address book, ``PeerUnreachableError`` when no connection can be made or the write does
  not finish within ``timeout_s``, and ``TransportClosedError`` after ``aclose()``.
- ``incoming()`` yields ``Received(peer, body)``, ``peer`` being the authenticated sender
  of the connection; it ends after ``aclose()``. One consumer at a time.
- ``aclose()`` is idempotent. ``rejected`` counts what was dropped below the frame layer
  (oversized length prefixes, truncated streams, refused handshakes).
- Received bodies wait for the consumer in a queue bounded *per peer* (``queue_bytes``,
  by default two maximal frames): a peer whose frames are not consumed yet is not read
  from (backpressure on its stream; its writes time out), so a flooding member holds at
  most that much of our memory and cannot crowd out the other peers' frames.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType

from crypto.identity import SiteIdentity
from node.errors import OversizedFrameError, TransportClosedError, UnknownPeerError
from node.wire.frames import DEFAULT_MAX_FRAME_BYTES

_CLOSED = object()


@dataclass(frozen=True)
class Received:
    peer: str
    body: bytes


class Transport(ABC):
    """Moves frame bodies between consortium members; see the module docstring."""

    def __init__(
        self,
        identity: SiteIdentity,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        timeout_s: float = 10.0,
    ) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.max_frame_bytes = max_frame_bytes
        self.timeout_s = timeout_s
        self.rejected: Counter[str] = Counter()
        self.queue_bytes = 2 * max_frame_bytes
        self._peers: dict[str, str] = {}
        self._closed = False
        self._queue: asyncio.Queue[Received | object] = asyncio.Queue()
        # Bytes queued per peer; updated from the receiving side (maybe another thread,
        # as libp2p's trio loop) and from the consumer, hence the lock.
        self._queued: Counter[str] = Counter()
        self._queued_lock = threading.Lock()

    @property
    @abstractmethod
    def listen_addr(self) -> str:
        """The address peers dial; valid after ``start()``."""

    @abstractmethod
    async def start(self) -> None: ...

    def set_peers(self, peers: Mapping[str, str]) -> None:
        self._peers = dict(peers)

    @abstractmethod
    async def send(self, peer: str, body: bytes) -> None: ...

    def _address_for(self, peer: str, body: bytes) -> str:
        """The send rules every transport shares: closed, oversized, unknown peer."""
        if self._closed:
            raise TransportClosedError("transport was closed")
        if len(body) > self.max_frame_bytes:
            raise OversizedFrameError(
                f"frame of {len(body):,} bytes exceeds the {self.max_frame_bytes:,}-byte limit"
            )
        address = self._peers.get(peer)
        if address is None:
            raise UnknownPeerError(f"peer {peer} is not in the address book")
        return address

    def _reserve(self, peer: str, size: int) -> bool:
        """Claim ``size`` bytes of ``peer``'s queue share before its body is read; False
        when it holds its share already (one frame always fits alone). A reservation is
        given back when the consumer takes the frame, or by ``_release`` if it never
        arrives whole."""
        with self._queued_lock:
            held = self._queued[peer]
            if held and held + size > self.queue_bytes:
                return False
            self._queued[peer] = held + size
            return True

    def _release(self, peer: str, size: int) -> None:
        with self._queued_lock:
            self._queued[peer] -= size
            if self._queued[peer] <= 0:
                del self._queued[peer]

    def queued_bytes(self) -> int:
        with self._queued_lock:
            return sum(self._queued.values())

    async def incoming(self) -> AsyncIterator[Received]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            assert isinstance(item, Received)
            self._release(item.peer, len(item.body))
            yield item

    def _end_incoming(self) -> None:
        """Make ``incoming()`` finish once the frames already queued are consumed."""
        self._queue.put_nowait(_CLOSED)

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

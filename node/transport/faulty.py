"""Injected network faults for the simulators, as a wrapper around any ``Transport``.

Drop (the frame is silently lost), delay (each frame waits an exponential time with the
given mean, so frames also overtake each other), and partitions between two groups of
members during a span of rounds (the round is read from the frame itself). Seeded:
the same seed loses the same frames.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from node.transport.base import Received, Transport
from node.wire.frames import decode

if TYPE_CHECKING:
    from node.config import FaultsSection as Faults


class FaultyTransport(Transport):
    def __init__(self, inner: Transport, faults: Faults, members: Sequence[str], seed: int):
        super().__init__(inner.identity, inner.max_frame_bytes, inner.timeout_s)
        self.inner = inner
        self.faults = faults
        self.index = {peer: i for i, peer in enumerate(members)}
        self.rng = random.Random(seed)
        self.rejected = inner.rejected
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def listen_addr(self) -> str:
        return self.inner.listen_addr

    async def start(self) -> None:
        await self.inner.start()

    def set_peers(self, peers: Mapping[str, str]) -> None:
        self.inner.set_peers(peers)

    def _cut(self, peer: str, body: bytes) -> bool:
        if not self.faults.partitions:
            return False
        me, them = self.index.get(self.peer_id, -1), self.index.get(peer, -1)
        round_ = decode(body, self.max_frame_bytes).round
        return any(
            p.start <= round_ < p.end
            and ((me in p.a and them in p.b) or (me in p.b and them in p.a))
            for p in self.faults.partitions
        )

    async def send(self, peer: str, body: bytes) -> None:
        if self.rng.random() < self.faults.drop or self._cut(peer, body):
            self.dropped += 1
            return
        if self.faults.delay_ms <= 0:
            await self.inner.send(peer, body)
            return
        delay = self.rng.expovariate(1000.0 / self.faults.delay_ms)

        async def later() -> None:
            await asyncio.sleep(delay)
            try:
                await self.inner.send(peer, body)
            except Exception:  # a delayed frame that cannot be delivered is a lost frame
                self.dropped += 1

        task = asyncio.create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def incoming(self) -> AsyncIterator[Received]:
        return self.inner.incoming()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.inner.aclose()

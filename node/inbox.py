"""The receive loop: every frame a peer sends is admitted, used or refused here.

A frame passes the :class:`node.wire.frames.FrameGuard` (signature, membership, replay,
round window, size) before anything reads it; an admitted one goes to the exchange,
which either uses all of it or raises :class:`node.errors.FrameError` having changed
nothing. Every refusal is counted against the peer and the loop goes on: a bad peer costs
itself a rejection, never this node its uptime.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from node.errors import FrameError, FutureFrameError
from node.wire.frames import PREFIX_BYTES

if TYPE_CHECKING:
    from node.runtime import Node


async def receive(node: Node) -> None:
    """Admit and use frames until cancelled (the node's task group owns this task)."""
    max_bytes = node.config.gossip.max_frame_bytes
    async for received in node.transport.incoming():
        peer = received.peer
        try:
            frame = node.guard.admit(received.body, peer, max_bytes)
        except FutureFrameError as exc:
            # Signed by a member on its own connection, so a claim of where it is; the
            # contents are dropped (the backlog resends them once we are in range).
            node.log.note_rejection(exc, peer)
            if peer in node.links.heard:
                node.pacing.claim(peer, exc.round)
                # It is alive, too: a site catching up must not take the neighbours it is
                # catching up with for down (secure mode's liveness is frame time).
                node.last_frame[peer] = asyncio.get_running_loop().time()
                node.heard.set()
            continue
        except FrameError as exc:  # counted by the guard
            node.log.note_rejection(exc, peer)
            continue
        try:
            node.exchange.handle(frame)
        except FrameError as exc:
            node.log.count_rejection(exc, peer)
            continue
        body = received.body
        node.bytes_received += PREFIX_BYTES + len(body)
        node.audit.frame("received", peer, frame.round, frame.topic, body, PREFIX_BYTES + len(body))
        node.heard.set()

"""The libp2p transport passes the same conformance kit as the memory transport, on
real loopback sockets with Noise and Yamux."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from crypto.identity import SiteIdentity
from node.p2p import P2PTransport
from node.transport import Transport
from tests.transport_kit import CHECKS, Make


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_p2p_transport_conformance(check: Callable[[Make], Coroutine[Any, Any, None]]) -> None:
    def make(identity: SiteIdentity, address: str | None = None) -> Transport:
        return P2PTransport(
            identity,
            address or "/ip4/127.0.0.1/tcp/0",
            max_frame_bytes=2 * 2**20,
            timeout_s=5.0,
            redial_s=0.5,
        )

    asyncio.run(check(make))


def test_a_peer_that_ignores_yamux_flow_control_is_cut_off() -> None:
    """py-libp2p's Yamux logged a peer that sent past the receive window and buffered the
    data anyway, so a member ignoring flow control could grow our memory while our reader
    held back (backpressure). Now that connection is closed and counted; the frames it
    sent before are kept, and honest peers get through."""
    import struct

    import trio
    from libp2p.peer.id import ID
    from libp2p.stream_muxer.yamux import yamux

    from node.frames import length_prefix

    limit = 2**20

    def make(identity: SiteIdentity) -> P2PTransport:
        return P2PTransport(identity, max_frame_bytes=limit, timeout_s=5.0, redial_s=0.5)

    async def scenario() -> tuple[int, list[bytes], bool]:
        victim, rogue, honest = (make(SiteIdentity.generate()) for _ in range(3))
        for t in (victim, rogue, honest):
            await t.start()
        book = {t.peer_id: t.listen_addr for t in (victim, rogue, honest)}
        for t in (victim, rogue, honest):
            t.set_peers({p: a for p, a in book.items() if p != t.peer_id})
        # Two full frames nobody consumes yet fill the rogue's queue share: from now on
        # the victim does not read the rogue's stream, and Yamux holds what arrives.
        for k in (1, 2):
            await rogue.send(victim.peer_id, bytes([k]) * (limit - 8))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def overrun() -> None:  # 20 MiB of DATA frames against a 16 MiB window
            muxed = rogue._streams[victim.peer_id].muxed_stream  # type: ignore[attr-defined]
            body = length_prefix(b"x" * limit) + b"\x00" * (4 * 2**20 - 4)
            header = struct.pack(yamux.YAMUX_HEADER_FORMAT, 0, 0, 0, muxed.stream_id, len(body))
            with trio.move_on_after(5):
                for _ in range(5):
                    await muxed.conn.secured_conn.write(header + body)
                    body = b"\x00" * len(body)
            rogue._resolve(done)

        assert victim._host is not None
        overrun_conns = victim._host.get_network().get_connections(ID.from_base58(rogue.peer_id))
        rogue._call_in_trio(overrun)
        await done
        for _ in range(250):
            if all(c.muxed_conn.event_closed.is_set() for c in overrun_conns):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        closed = all(c.muxed_conn.event_closed.is_set() for c in overrun_conns)  # type: ignore[attr-defined]
        await honest.send(victim.peer_id, b"honest")
        got: list[bytes] = []

        async def collect() -> None:
            async for item in victim.incoming():
                got.append(item.body[:8])
                if item.body == b"honest":
                    return

        await asyncio.wait_for(collect(), 10)
        for t in (victim, rogue, honest):
            await t.aclose()
        return victim.rejected["window_exceeded"], got, closed and bool(overrun_conns)

    exceeded, got, closed = asyncio.run(scenario())
    assert closed  # the whole connection, not one stream
    assert exceeded == 1
    assert got == [b"\x01" * 8, b"\x02" * 8, b"honest"]

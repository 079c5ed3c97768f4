"""The libp2p transport passes the same conformance kit as the memory transport, on
real loopback sockets with Noise and Yamux."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from crypto.identity import SiteIdentity
from node.transport.base import Transport
from node.transport.conformance import CHECKS, Make
from node.transport.p2p import P2PTransport


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

    from node.wire.frames import length_prefix

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


def test_a_peer_holds_at_most_two_connections_the_newest_win() -> None:
    """Each connection may hold a full Yamux window unread, so a member dialling again
    and again would multiply our memory: a new inbound connection closes the peer's
    oldest beyond two (the newest wins, so a restarted honest peer always gets in)."""
    from libp2p.peer.id import ID

    from node.transport.p2p import MAX_CONNECTIONS_PER_PEER

    def make(identity: SiteIdentity) -> P2PTransport:
        return P2PTransport(identity, timeout_s=5.0, redial_s=60.0)

    async def scenario() -> tuple[int, int, list[bytes]]:
        insider = SiteIdentity.generate()
        victim = make(SiteIdentity.generate())
        rogues = [make(insider) for _ in range(4)]  # one member's key, four dialers
        await victim.start()
        for r in rogues:
            await r.start()
        victim.set_peers({insider.peer_id: rogues[0].listen_addr})
        got: list[bytes] = []
        for k, r in enumerate(rogues):
            r.set_peers({victim.peer_id: victim.listen_addr})
            await r.send(victim.peer_id, f"from dialer {k}".encode())
            async for item in victim.incoming():
                got.append(item.body)
                break
        assert victim._host is not None
        held = len(victim._host.get_network().get_connections(ID.from_base58(insider.peer_id)))
        replaced = victim.rejected["connection_replaced"]
        for t in (victim, *rogues):
            await t.aclose()
        return held, replaced, got

    held, replaced, got = asyncio.run(scenario())
    assert held <= MAX_CONNECTIONS_PER_PEER
    assert replaced >= 4 - MAX_CONNECTIONS_PER_PEER
    assert got == [f"from dialer {k}".encode() for k in range(4)]

"""One conformance kit for every ``Transport``: libp2p, the in-memory fake and the
fault-injecting wrapper must all pass it, and so must a transport a site writes itself.

A kit check is ``async def check(make)``: ``make(identity, address)`` returns an unstarted
transport for that site identity (``address`` None: any free address; given: reuse it,
as a restarted node does). A failed check raises AssertionError; :data:`CHECKS` lists
them all, for a test runner to parametrize over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from crypto.identity import SiteIdentity
from node.errors import (
    OversizedFrameError,
    PeerUnreachableError,
    TransportClosedError,
    TransportError,
    UnknownPeerError,
)
from node.transport.base import Received, Transport


@contextlib.contextmanager
def _raises(kind: type[BaseException]) -> Iterator[None]:
    """The block must raise ``kind`` (pytest.raises, without needing pytest)."""
    try:
        yield
    except kind:
        return
    raise AssertionError(f"expected {kind.__name__}")


class Make(Protocol):
    def __call__(self, identity: SiteIdentity, address: str | None = None) -> Transport: ...


async def _mesh(make: Make, n: int) -> list[Transport]:
    transports = [make(SiteIdentity.generate()) for _ in range(n)]
    for t in transports:
        await t.start()
    for t in transports:
        t.set_peers({o.peer_id: o.listen_addr for o in transports if o is not t})
    return transports


async def _receive(t: Transport, count: int, timeout: float = 20.0) -> list[Received]:
    out: list[Received] = []

    async def collect() -> None:
        async for item in t.incoming():
            out.append(item)
            if len(out) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


async def _close_all(transports: list[Transport]) -> None:
    for t in transports:
        await t.aclose()


async def check_delivers_in_order(make: Make) -> None:
    a, b = await _mesh(make, 2)
    try:
        bodies = [f"frame {i}".encode() * (i + 1) for i in range(30)]
        receiving = asyncio.create_task(_receive(b, len(bodies)))
        for body in bodies:
            await a.send(b.peer_id, body)
        got = await receiving
        assert [r.body for r in got] == bodies
        assert {r.peer for r in got} == {a.peer_id}
    finally:
        await _close_all([a, b])


async def check_both_directions_at_once(make: Make) -> None:
    a, b = await _mesh(make, 2)
    try:
        at_a = asyncio.create_task(_receive(a, 10))
        at_b = asyncio.create_task(_receive(b, 10))

        async def pump(src: Transport, dst: Transport) -> None:
            for i in range(10):
                await src.send(dst.peer_id, bytes([i]) * 100)

        await asyncio.gather(pump(a, b), pump(b, a))
        assert [r.body[0] for r in await at_a] == list(range(10))
        assert [r.body[0] for r in await at_b] == list(range(10))
    finally:
        await _close_all([a, b])


async def check_size_limit(make: Make) -> None:
    a, b = await _mesh(make, 2)
    try:
        big = bytes(range(256)) * (2**20 // 256)  # 1 MiB
        receiving = asyncio.create_task(_receive(b, 1))
        await a.send(b.peer_id, big)
        assert (await receiving)[0].body == big
        with _raises(OversizedFrameError):
            await a.send(b.peer_id, b"x" * (a.max_frame_bytes + 1))
    finally:
        await _close_all([a, b])


async def check_unknown_peer(make: Make) -> None:
    a, b = await _mesh(make, 2)
    try:
        stranger = SiteIdentity.generate().peer_id
        with _raises(UnknownPeerError):
            await a.send(stranger, b"hello")
        a.set_peers({})
        with _raises(UnknownPeerError):
            await a.send(b.peer_id, b"hello")
    finally:
        await _close_all([a, b])


async def check_allowlist_refuses_outsiders(make: Make) -> None:
    a, b = await _mesh(make, 2)
    outsider = make(SiteIdentity.generate())
    await outsider.start()
    outsider.set_peers({b.peer_id: b.listen_addr})  # knows b's address; b does not know it
    try:
        with _raises(TransportError):
            await outsider.send(b.peer_id, b"let me in")
            await asyncio.sleep(0.5)
            await outsider.send(b.peer_id, b"let me in")  # a lazy refusal shows on the 2nd
        receiving = asyncio.create_task(_receive(b, 1))
        await a.send(b.peer_id, b"member")
        got = await receiving
        assert [(r.peer, r.body) for r in got] == [(a.peer_id, b"member")]
    finally:
        await _close_all([a, b, outsider])


async def check_close_rules(make: Make) -> None:
    a, b = await _mesh(make, 2)
    ended = asyncio.create_task(_receive(a, 1_000_000, timeout=30))
    await a.aclose()
    await a.aclose()  # idempotent
    assert await ended == []  # incoming() ends on close
    with _raises(TransportClosedError):
        await a.send(b.peer_id, b"late")
    with _raises(PeerUnreachableError):
        await b.send(a.peer_id, b"to a closed peer")
    await b.aclose()


async def check_peer_restart_reconnects(make: Make) -> None:
    a, b = await _mesh(make, 2)
    identity_b = getattr(b, "identity", None)
    assert isinstance(identity_b, SiteIdentity), "transports expose their site identity"
    try:
        receiving = asyncio.create_task(_receive(b, 1))
        await a.send(b.peer_id, b"before")
        await receiving
        address = b.listen_addr
        await b.aclose()
        await asyncio.sleep(0.2)
        with _raises(PeerUnreachableError):
            await a.send(b.peer_id, b"while down")
        b = make(identity_b, address)
        await b.start()
        b.set_peers({a.peer_id: a.listen_addr})
        receiving = asyncio.create_task(_receive(b, 1))
        for _ in range(50):  # the sender backs off; it must come back within seconds
            try:
                await a.send(b.peer_id, b"after")
                break
            except PeerUnreachableError:
                await asyncio.sleep(0.2)
        assert (await receiving)[0].body == b"after"
    finally:
        await _close_all([a, b])


CHECKS: list[Callable[[Make], Coroutine[Any, Any, None]]] = [
    check_delivers_in_order,
    check_both_directions_at_once,
    check_size_limit,
    check_unknown_peer,
    check_allowlist_refuses_outsiders,
    check_close_rules,
    check_peer_restart_reconnects,
]

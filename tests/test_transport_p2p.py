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

"""The in-memory transport passes the shared conformance kit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from crypto.identity import SiteIdentity
from node.transport.base import Transport
from node.transport.memory import MemoryNetwork, MemoryTransport
from tests.transport_kit import CHECKS, Make


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_memory_transport_conformance(check: Callable[[Make], Coroutine[Any, Any, None]]) -> None:
    network = MemoryNetwork()

    def make(identity: SiteIdentity, address: str | None = None) -> Transport:
        return MemoryTransport(network, identity, address, max_frame_bytes=2 * 2**20)

    asyncio.run(check(make))

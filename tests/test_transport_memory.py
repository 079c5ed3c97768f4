"""The in-memory transport passes the shared conformance kit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from crypto.identity import SiteIdentity
from node.config import FaultsSection
from node.transport.base import Transport
from node.transport.conformance import CHECKS, Make
from node.transport.faulty import FaultyTransport
from node.transport.memory import MemoryNetwork, MemoryTransport


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_memory_transport_conformance(check: Callable[[Make], Coroutine[Any, Any, None]]) -> None:
    network = MemoryNetwork()

    def make(identity: SiteIdentity, address: str | None = None) -> Transport:
        return MemoryTransport(network, identity, address, max_frame_bytes=2 * 2**20)

    asyncio.run(check(make))


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_fault_injecting_transport_conformance(
    check: Callable[[Make], Coroutine[Any, Any, None]],
) -> None:
    """The wrapper the simulators inject faults with keeps every rule when it injects none."""
    network = MemoryNetwork()

    def make(identity: SiteIdentity, address: str | None = None) -> Transport:
        inner = MemoryTransport(network, identity, address, max_frame_bytes=2 * 2**20)
        return FaultyTransport(inner, FaultsSection(), [], seed=0)

    asyncio.run(check(make))

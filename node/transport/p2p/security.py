"""Noise, then the consortium allowlist, before any stream opens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libp2p.abc import (
    IRawConnection,
    ISecureConn,
    ISecureTransport,
)
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure


class AllowlistSecurity(ISecureTransport):
    """Noise, then the allowlist: wraps the Noise transport, never replaces its checks."""

    def __init__(
        self,
        inner: ISecureTransport,
        allowed: Callable[[str], bool],
        refused: Callable[[str], None],
        make_room: Callable[[ID], Awaitable[None]],
    ):
        self.inner = inner
        self.allowed = allowed
        self.refused = refused  # counts a refusal under its reason
        self.make_room = make_room  # closes a peer's oldest connections over the limit

    async def _admit(self, conn: ISecureConn, inbound: bool) -> ISecureConn:
        remote = conn.get_remote_peer()
        peer = str(remote)
        if not self.allowed(peer):
            self.refused("refused_handshake")
            await conn.close()
            raise HandshakeFailure(f"peer {peer} is not in the consortium allowlist")
        if inbound:
            await self.make_room(remote)
        return conn

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._admit(await self.inner.secure_inbound(conn), inbound=True)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._admit(await self.inner.secure_outbound(conn, peer_id), inbound=False)

"""A member site that attacks its neighbours for the whole run (the chaos test).

It runs the real node, so it also gossips honestly (its neighbours' rounds stay full),
and after every frame it sends a neighbour, it also sends that neighbour one of each
attack a member holding a valid key can make: a far-future round, garbage bytes, a
signed frame with a malformed payload, a replay of its last frame, a frame naming its
peer ID that it did not sign, a plaintext-mode frame of a secure topic, and a burst of
junk to press on the receiver's queue. ``python -m tests.hostile_node --config site.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import msgpack
import torch

from crypto.identity import SiteIdentity, load_key
from node.config import load_config
from node.runtime import Node
from node.transport.p2p import P2PTransport
from node.wire.frames import decode, seal
from node.wire.update import encode_update

BURST = 20


class HostileTransport(P2PTransport):
    """libp2p transport that follows each real frame with every attack on its peer."""

    def __init__(self, identity: SiteIdentity, dim: int, **kwargs: object) -> None:
        super().__init__(identity, **kwargs)  # type: ignore[arg-type]
        self.me, self.dim, self.attacks = identity, dim, 0

    async def send(self, peer: str, body: bytes) -> None:
        await super().send(peer, body)
        round_ = decode(body).round
        bogus = encode_update(self.dim, 10**6, [], None)
        forged = bytearray(seal(self.me, round_, "update", bogus))
        forged[-1] ^= 1  # a signature that does not verify
        attacks = [
            seal(self.me, round_ + 10**6, "update", bogus),  # far-future round
            os.urandom(64),  # garbage
            seal(self.me, round_, "update", msgpack.packb({"dim": self.dim})),  # bad payload
            body,  # replay of the frame just sent
            bytes(forged),
            seal(self.me, round_, "sum", b"\x80"),  # a secure topic in plaintext mode
            *(os.urandom(4096) for _ in range(BURST)),  # pressure on the queue
        ]
        for attack in attacks:
            try:
                await super().send(peer, attack)
                self.attacks += 1
            except Exception:
                pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    identity = load_key(config.site.key)
    torch.set_num_threads(1)
    transport = HostileTransport(
        identity,
        0,
        listen=config.site.listen,
        max_frame_bytes=config.gossip.max_frame_bytes,
        timeout_s=max(2.0, config.gossip.deadline_s),
    )
    node = Node(config, transport=transport)
    transport.dim = node.dim
    asyncio.run(node.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

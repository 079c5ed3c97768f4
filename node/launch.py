"""``murmur node``: a site's node from its config, on libp2p.

Kept apart from the round loop (:mod:`node.runtime`) because a real site does one thing
before its first round: when ``[data] join_features`` asks for it, it computes the
consortium's feature statistics by secure sum (:mod:`node.join_features`) on the same
transport its node then uses.
"""

from __future__ import annotations

import asyncio

import torch

from crypto.identity import load_key
from node.config import NodeConfig
from node.join_features import joined
from node.runtime import Node
from node.wiring import libp2p_transport


def main(config: NodeConfig) -> int:
    torch.set_num_threads(1)
    asyncio.run(_start(config))
    return 0


async def _start(config: NodeConfig) -> None:
    identity = load_key(config.site.key)
    transport = libp2p_transport(config, identity)
    config = await joined(config, identity, transport)
    await Node(config, transport).run()

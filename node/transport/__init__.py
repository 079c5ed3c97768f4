"""How frame bodies move between sites: the ``Transport`` interface, the libp2p transport,
an in-process one for tests and the simulators, fault injection, and send slots."""

from node.transport.base import Received, Transport

__all__ = ["Received", "Transport"]

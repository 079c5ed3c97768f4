"""Secure neighbourhood aggregation (``[gossip] secure``), one module per role.

:mod:`.exchange` holds :class:`SecureExchange` and the protocol's description;
:mod:`.session` the state the roles share; :mod:`.contributor`, :mod:`.aggregator`,
:mod:`.receiver` and :mod:`.join` (keys, receipts, bases) what each role does with it.
"""

from node.exchange.secure.exchange import SecureExchange
from node.exchange.secure.session import (
    DOWN_ROUNDS,
    KEEP_ROUNDS,
    SUM_LIMIT,
    Aggregation,
    SecureSession,
)

__all__ = [
    "DOWN_ROUNDS",
    "KEEP_ROUNDS",
    "SUM_LIMIT",
    "Aggregation",
    "SecureExchange",
    "SecureSession",
]

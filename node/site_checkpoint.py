"""What a site's checkpoint holds, and resuming from it.

The checkpoint is the round protocol's memory (:mod:`node.runtime`): written atomically
(:mod:`node.state.checkpoint`) after this site's part of a round is taken (write-ahead)
and again after the round is mixed. Each part writes its own snapshot (the model side,
the links, the exchange) and *commits* it after the write: only then may it tell
neighbours what it has applied (acks, verdicts), so a crash between the two never makes
a neighbour believe something was applied that the restarted site does not have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.exchange.plaintext import PlaintextExchange
from node.reload import apply_membership
from node.state import checkpoint
from node.state.links import Links
from node.state.membership import Membership

if TYPE_CHECKING:
    from node.runtime import Node


def save(node: Node) -> None:
    """Checkpoint atomically; then each part may announce what the checkpoint holds."""
    links, exchange = node.links.snapshot(), node.exchange.snapshot()
    checkpoint.save(
        node.ckpt_path,
        {
            "layout": checkpoint.LAYOUT,
            "round": node.round,
            "phase": node.phase,
            "incarnation": node.incarnation,
            "bytes_sent": node.bytes_sent,
            "bytes_received": node.bytes_received,
            "audit_tail": node.audit.tail(),
            "model": node.learner.snapshot(),
            "links": links,
            "exchange": exchange,
        },
    )
    node.links.commit(links)
    node.exchange.commit(exchange)


def restore(node: Node) -> bool:
    """Resume from the checkpoint; a config whose membership changed while the node was
    down is applied afterwards, as a reload would be."""
    saved = checkpoint.load(node.ckpt_path)
    if saved is None:
        return False
    saved = checkpoint.upgrade(saved, plaintext=isinstance(node.exchange, PlaintextExchange))
    node.learner.restore(saved["model"], node.ckpt_path)
    node.round, node.phase = int(saved["round"]), str(saved["phase"])
    node.incarnation = bytes(saved.get("incarnation", node.incarnation))
    node.links = Links.restore(node.identity.peer_id, saved["links"], node.state.xhat[0])
    node.bytes_sent = int(saved["bytes_sent"])
    node.bytes_received = int(saved.get("bytes_received", 0))  # older checkpoints lack it
    recovered = node.audit.recover(saved.get("audit_tail", ""))
    if recovered:
        node.emit("audit_recovered", entries=recovered)
    node.exchange.restore(saved["exchange"])
    node.guard.advance(node.round)
    if node.links.membership != Membership.of(node.config):
        apply_membership(node, node.config)  # the config was edited while the node was down
    return True

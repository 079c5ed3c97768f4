"""Membership changes at a round boundary: SIGHUP, or a config edited while down.

A new ``[consortium]`` re-weights this site's links (Metropolis–Hastings from the new
graph), resynchronises the neighbours whose weight changed (node.state.membership), gives
the step guard the new spectrum, and tells the transport the new address book. The
exchange may refuse a change first (secure aggregation cannot rewire mid-run), and then
nothing has been changed. A site no longer in ``members`` stops after its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from node.audit.log import config_digest
from node.config import NodeConfig, load_config
from node.errors import ConfigError
from node.state.membership import Membership

if TYPE_CHECKING:
    from node.runtime import Node


def check_addresses(config: NodeConfig, peers: Iterable[str], me: str) -> None:
    missing = [p for p in peers if p != me and p not in config.consortium.peers]
    if missing:
        raise ConfigError(f"no address in [consortium] peers for {missing}")


def reload(node: Node, config: NodeConfig | None) -> None:
    """Apply ``config`` (or the re-read config file); a bad one is logged, never fatal."""
    try:
        apply_membership(node, config or load_config(node.config.path))
    except ConfigError as exc:
        node.emit("reload_failed", detail=str(exc))


def apply_membership(node: Node, config: NodeConfig) -> None:
    """Re-weight and resynchronise ``node`` for a new ``[consortium]``."""
    me = node.identity.peer_id
    membership = Membership.of(config)
    if me not in membership.members:
        node.emit("removed", detail="this site is no longer in [consortium] members")
        node.stopping.set()
        return
    weight = membership.weights(me)
    check_addresses(config, weight, me)
    node.exchange.rewire(membership)  # may refuse (secure); nothing is changed before
    change = node.links.rewire(membership, weight, node.state.xhat[0], node.state.s[0])
    node.learner.rewire(membership.matrix())
    node.config = replace(node.config, consortium=config.consortium)
    node.index = node.log.index = config.consortium.members.index(me)
    node.guard.set_allowlist(config.consortium.members)
    book = config.consortium.peers
    node.transport.set_peers({p: book[p] for p in node.exchange.peers if p in book})
    node.audit.append("config", digest=config_digest(config))
    node.emit(
        "membership",
        members=len(config.consortium.members),
        neighbours=len(node.links.neighbours),
        added=list(change.added),
        removed=list(change.removed),
        resynced=list(change.added + change.reweighted),
    )

"""How a site talks: its transport and its exchange, as its config chooses.

Built once per node, beside the parts :mod:`node.assembly` builds; kept apart from the
round loop so that which transport or protocol mode runs is decided in one place.
"""

from __future__ import annotations

from crypto.identity import SiteIdentity
from node.config import NodeConfig
from node.exchange.base import Exchange, Host
from node.exchange.plaintext import PlaintextExchange
from node.exchange.secure_round import SecureRound
from node.gossip.compress import require_shared_slots, shared_indices
from node.key_admin import encryption_key_path, require_key
from node.learner import Learner
from node.site_log import SiteLog
from node.state.membership import Membership
from node.transport.base import Transport
from node.transport.faulty import FaultyTransport


def libp2p_transport(config: NodeConfig, identity: SiteIdentity) -> Transport:
    """The site's libp2p transport (libp2p loads only for a real node)."""
    from node.transport.p2p import P2PTransport

    gossip = config.gossip
    timeout = max(2.0, gossip.deadline_s)
    return P2PTransport(identity, config.site.listen, gossip.max_frame_bytes, timeout_s=timeout)


def site_transport(
    config: NodeConfig, identity: SiteIdentity, index: int, given: Transport | None
) -> Transport:
    """libp2p unless a transport is given (tests, the memory network), wrapped in the
    fault injector when ``[faults]`` asks for drops, delays or partitions."""
    if given is None:
        given = libp2p_transport(config, identity)
    faults, members = config.faults, config.consortium.members
    if faults.drop or faults.delay_ms or faults.partitions:
        return FaultyTransport(given, faults, members, config.consortium.seed * 31 + index)
    return given


def site_exchange(
    host: Host, config: NodeConfig, membership: Membership, learner: Learner, log: SiteLog
) -> Exchange:
    """The protocol mode ``[gossip] secure`` names: plaintext gossip, or secure aggregation
    (which needs a shared-index compressor and the site's encryption key)."""
    indices = shared_indices(learner.compressor, learner.dim)
    mode, gossip = config.gossip.secure, config.gossip
    if mode == "off":
        guard = learner.guard_step
        return PlaintextExchange(
            host,
            learner.dim,
            indices,
            guard,
            gossip.max_frame_bytes,
            learner.announcement,
            learner.earliest_stop(),
        )
    require_shared_slots(learner.compressor, mode)
    assert indices is not None  # a shared-index compressor, checked above
    require_key(config)  # a lost encryption key is never silently regenerated
    return SecureRound(
        host,
        mode,
        encryption_key_path(config),
        membership,
        config.consortium.seed,
        indices,
        set(config.consortium.peers),
        log.count_rejection,
        learner.announcement,
        learner.earliest_stop(),
        learner.stopped_from,
    )

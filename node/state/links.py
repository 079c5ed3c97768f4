"""A node's links to its neighbours: weights, backlogs, acknowledgements, liveness.

One place holds everything that is per neighbour, so that adding or dropping a
neighbour (a membership change, :mod:`node.state.membership`) touches every table at once and
the checkpoint stores and restores them together.

Incarnations: every node draws a random incarnation id when it starts without a
checkpoint, and keeps it in its checkpoint. Each update frame carries the sender's id
and the receiver's as the sender last heard it. A neighbour whose id changed has
restarted from nothing: its public copy is x̂₀ again and its sequence numbers start over,
so the running total kept for it is no longer what it holds. :meth:`Links.reincarnate`
then takes that total out of s, puts W_ij x̂₀ in its place, expects its items from seq 0,
and replaces our backlog to it with one dense copy of our x̂ (its own totals assume x̂₀
of us). An ack is applied only when it echoes our current id, so acks meant for our
previous life never drop items of this one.
"""

from __future__ import annotations

from typing import Any

import torch

from node.state.backlog import InboundLink, Item, OutboundLink
from node.state.membership import Change, Membership, diff


class Links:
    """Row ``me`` of W and one outbound backlog and inbound total per neighbour."""

    def __init__(
        self,
        me: str,
        membership: Membership,
        xhat: torch.Tensor,
        weight: dict[str, float] | None = None,
    ) -> None:
        """``weight`` is row ``me`` of the membership's W when the caller has it already."""
        self.me = me
        self.membership = membership
        self.weight = membership.weights(me) if weight is None else weight
        self.out: dict[str, OutboundLink] = {}
        self.inbound: dict[str, InboundLink] = {}
        self.acked: dict[str, int] = {}
        self.heard: dict[str, int] = {}
        self.silent: dict[str, int] = {}
        self.incarnation: dict[str, bytes] = {}  # each neighbour's, as last heard
        for peer in self.neighbours:
            # Every site starts from the same x₀, so s_i already holds W_ij x₀ of each link.
            self.open(peer, xhat * self.weight[peer])

    @property
    def neighbours(self) -> list[str]:
        """The peers of row ``me`` of W, in member order."""
        return [p for p in self.weight if p != self.me]

    def open(self, peer: str, received: torch.Tensor) -> None:
        """Start a link to ``peer``; ``received`` is what s_i already holds of it."""
        self.out[peer] = OutboundLink()
        self.inbound[peer] = InboundLink(total=received.clone())
        self.acked[peer] = self.heard[peer] = -1
        self.silent[peer] = 0

    def close(self, peer: str) -> None:
        for table in (self.out, self.inbound, self.acked, self.heard, self.silent):
            del table[peer]
        self.incarnation.pop(peer, None)

    def reincarnate(self, peer: str, xhat0: torch.Tensor, s: torch.Tensor) -> None:
        """``peer`` restarted without its checkpoint (module docstring): its total in s
        becomes W_ij x̂₀. The dense copy of our x̂ it needs is :meth:`resend_all`, which
        the caller runs when no training thread is writing x̂."""
        inbound = self.inbound[peer]
        assert inbound.total is not None
        fresh = xhat0 * self.weight[peer]
        with torch.no_grad():
            s.add_(fresh - inbound.total)
        self.inbound[peer] = type(inbound)(total=fresh)
        self.acked[peer] = -1

    def resend_all(self, peer: str, xhat: torch.Tensor) -> None:
        """Replace the backlog to ``peer`` by one dense copy of our weighted x̂."""
        self.out[peer].reset(xhat * self.weight[peer])

    def rewire(
        self,
        membership: Membership,
        weight: dict[str, float],
        xhat: torch.Tensor,
        s: torch.Tensor,
    ) -> Change:
        """Move to ``membership`` (whose row ``me`` is ``weight``): fix the self term and
        removed links in s, queue resets."""
        change = diff(self.me, self.weight, weight)
        with torch.no_grad():
            s.add_(xhat, alpha=change.self_delta)
            for peer in change.removed:
                total = self.inbound[peer].total
                assert total is not None
                s.sub_(total)
                self.close(peer)
            for peer in change.added:
                self.open(peer, torch.zeros_like(xhat))
            for peer in change.added + change.reweighted:
                self.out[peer].reset(xhat * weight[peer])
        self.membership, self.weight = membership, weight
        return change

    def snapshot(self) -> dict[str, Any]:
        """State for the checkpoint (read-only; :meth:`commit` once it is on disk)."""
        return {
            "membership": self.membership.to_dict(),
            "out": {
                p: {
                    "next_seq": o.next_seq,
                    "pending": [
                        [i.seq, i.indices, i.values, i.reset, i.shared_round, i.quantum]
                        for i in o.pending
                    ],
                }
                for p, o in self.out.items()
            },
            "applied": {p: self.inbound[p].applied for p in self.neighbours},
            "totals": {p: link.total for p, link in self.inbound.items()},
            "incarnation": dict(self.incarnation),
        }

    def commit(self, saved: dict[str, Any]) -> None:
        """``saved`` is on disk: acks sent from now on are what it has applied."""
        self.acked = dict(saved["applied"])

    @classmethod
    def restore(cls, me: str, saved: dict[str, Any], xhat: torch.Tensor) -> Links:
        links = cls(me, Membership.from_dict(saved["membership"]), xhat)
        for peer, raw in saved["out"].items():
            out = links.out[peer]
            out.next_seq = int(raw["next_seq"])
            out.pending.extend(
                Item(int(seq), idx, values, bool(reset), shared, quantum)
                for seq, idx, values, reset, shared, quantum in raw["pending"]
            )
        for peer, applied in saved["applied"].items():
            links.inbound[peer].applied = links.acked[peer] = int(applied)
            links.inbound[peer].total = saved["totals"][peer].clone()
        links.incarnation = {
            p: bytes(v) for p, v in saved.get("incarnation", {}).items() if p in links.inbound
        }
        return links

"""Secure aggregation as an :class:`~node.exchange.base.Exchange`: a round of
:class:`~node.exchange.secure.SecureExchange` (contributor, aggregator, receiver) driven
for the node, with the start-up key exchange and secure mode's own liveness rule.

Liveness: a neighbour a round behind sends no part of ours, yet must not be dropped from
its contributors' sums, so here a neighbour is taken to be down after SUSPECT_AFTER
deadlines with no frame at all (receipts come every round), not after missed rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from crypto.cipher import cipher_by_name
from node.errors import ConfigError, FrameError
from node.exchange.base import SUSPECT_AFTER, Exchange, Host, OutOfRange
from node.exchange.secure import SecureExchange
from node.exchange.secure.validation_tail import read_tail
from node.gossip.sparse import Sparse
from node.gossip.validation_stop import NOTHING_HEARD, Heard
from node.state import checkpoint
from node.state.membership import Membership
from node.wire.frames import Frame
from node.wire.sealed import SECURE_TOPICS
from node.wire.update import Validation


class SecureRound(Exchange):
    def __init__(
        self,
        host: Host,
        mode: str,
        key_path: Path,
        membership: Membership,
        seed: int,
        indices: Callable[[int], torch.Tensor],
        reachable: set[str],
        on_reject: Callable[[FrameError, str], None],
        validation: Callable[[], Validation | None] = lambda: None,
        earliest_stop: int = 0,
        stopped_from: Callable[[], int | None] = lambda: None,
    ) -> None:
        """``key_path``: this site's encryption key, made on first start (0600) and never
        silently made again (node.key_admin checks that before this is built).
        ``validation`` gives what this round's contributions and receipts say of the
        validation stop (node.exchange.secure.validation_tail; None: it is off here); a
        neighbour's stop announced in a round before ``earliest_stop`` (1-based) is one no
        honest site can make; ``stopped_from`` gives the first round (0-based) this site
        no longer trains in, from which its receipts say it stopped."""
        self.host = host
        cipher = cipher_by_name(mode)
        if key_path.exists():
            secret = cipher.load(key_path)
        else:
            checkpoint.private_dir(key_path.parent)
            secret = cipher.generate()
            cipher.save(secret, key_path)
        self.secure = SecureExchange(
            host.identity,
            cipher,
            secret,
            membership,
            seed,
            host.deadline_s,
            indices,
            host.state.xhat[0],
            host.send_body,
            host.emit,
            host.incarnation,
            reachable=reachable,
        )
        self.secure.on_reject = on_reject
        self.secure.announce = validation
        self.secure.stopped_from = stopped_from
        self.secure.earliest_stop = earliest_stop
        self.secure.arrived = host.heard.set
        self.secure.supervise = host.supervise

    @property
    def peers(self) -> set[str]:
        return self.secure.two_hop()

    async def join(self) -> None:
        """Before the first round, exchange encryption keys both ways with every
        neighbour, and wait until each neighbour has done the same with its own. A round
        started earlier yields no sum anyone can open and costs a full deadline; worse,
        sites that start apart stay out of step. Receipts go out when our readiness
        changes or every second, no faster. Gives up after SUSPECT_AFTER deadlines, as for
        a silent neighbour."""
        host, secure = self.host, self.secure
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = began + SUSPECT_AFTER * host.deadline_s
        secure.round = host.round
        sent_at, sent_ready = -1.0, False
        while not host.stopping.is_set() and loop.time() < end:
            target = host.catch_up_target(host.round)
            if target > host.round:
                # Restarted behind neighbours that kept going: their frames are beyond the
                # guard's lead until this site is in their round, so it moves there first
                # (a round it had pushed stays owed in the outboxes, as for a missed one).
                host.move_to(target)
                secure.round = host.round
            unkeyed, unready = secure.unkeyed(), secure.unready()
            if not unkeyed and not unready:
                break
            if loop.time() - sent_at >= 1.0 or sent_ready != (not unkeyed):
                await secure.handshake(unkeyed)
                sent_at, sent_ready = loop.time(), not unkeyed
            host.heard.clear()
            wait = min(1.0 - (loop.time() - sent_at), end - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(host.heard.wait(), max(wait, 0.0))
        secure.started = True
        host.emit(
            "joined",
            waited_s=round(loop.time() - began, 3),
            unkeyed=secure.unkeyed(),
            unready=secure.unready(),
        )
        for p in host.links.neighbours:  # one never heard from has been silent since we began
            host.last_frame.setdefault(p, began)

    def handle(self, frame: Frame) -> None:
        if frame.topic not in SECURE_TOPICS:
            # Under secure aggregation no neighbour's update arrives in the clear: a
            # plaintext update would go straight into s, outside the protocol.
            raise FrameError(f"{frame.topic!r} frame from {frame.sender} in secure mode")
        self.host.last_frame[frame.sender] = asyncio.get_running_loop().time()
        self.secure.handle(frame)
        heard = self.host.links.heard
        if frame.topic == "receipt" and frame.sender in heard:
            heard[frame.sender] = max(heard[frame.sender], frame.round)

    def contribute(self, t: int, q: Sparse) -> None:
        """Contributions are taken from x̂ (which holds q): one sealed part per receiver."""
        self.secure.absent = self.suspected()
        self.secure.contribute(t, self.host.state.xhat[0])

    async def send(self, t: int) -> None:
        await self.secure.send_round(t)

    def suspected(self) -> set[str]:
        now = asyncio.get_running_loop().time()
        limit = SUSPECT_AFTER * self.host.deadline_s
        last = self.host.last_frame
        return {p for p in self.host.links.neighbours if now - last.get(p, now) > limit}

    def waiting_for(self, t: int, suspected: set[str], out_of_range: OutOfRange) -> list[str]:
        """Neighbours whose term of a forwarded sum of round t has not arrived."""
        links = self.host.links
        live = [p for p in links.neighbours if p not in suspected]
        if len(live) < 2:
            # No sum of two contributors can come; keep pace with the neighbour that is
            # left, which still needs our contributions round by round.
            return [p for p in live if links.heard[p] < t]
        # A neighbour two rounds past t has long sent its part of t; what is not here will
        # not come (a restarted site catching up does not wait a deadline for it).
        gone = {p for p in live if links.heard[p] >= t + 2 or out_of_range(p, t)}
        covered = self.secure.covered(t)
        return [p for p in live if p not in covered | gone]

    async def resolve(self, t: int) -> set[str]:
        # No torch.no_grad() across an await: grad mode is per thread, and another node's
        # coroutine (tests run several in one loop) would inherit or undo it.
        state = self.host.state
        return await self.secure.resolve(t, state.s[0], state.xhat[0])

    def heard_validation(self, t: int) -> Heard:
        """The summed tails of round ``t``'s sums (node.exchange.secure.validation_tail),
        and whether a neighbour's receipts have said it stopped, in round ``t`` or before;
        tails no honest neighbourhood could add up to are not mixed, and are logged."""
        links = self.host.links
        told = any(r <= t for r in self.secure.stopped_at.values())
        tail = self.secure.tails.pop(t, None)
        heard = None
        if tail is not None:
            heard = read_tail(tail, sum(links.weight[p] for p in links.neighbours), told)
            if heard is None:
                self.host.emit(
                    "validation_refused",
                    round=t + 1,
                    detail="the sums' validation tail is not one honest neighbours could send",
                )
        return heard or replace(NOTHING_HEARD, told=told)

    async def linger(self, last: int, clock: int) -> bool:
        """Receipts close the neighbours' last rounds; our own close with theirs. We stay
        until each live neighbour acknowledges our verdicts: a last receipt lost on the
        way would leave its contributions open for good. Acks carry only checkpointed
        state, so save first to let ours advance."""
        self.host.save()
        await self.secure.send_receipts(last)
        unacked = set(self.secure.unacknowledged()) - self.suspected()
        return any(box.pending for box in self.secure.outbox.values()) or bool(unacked)

    def rewire(self, membership: Membership) -> None:
        # Against the links' membership, which a checkpoint restores: the exchange's own is
        # built from today's config, so it would miss an edit made while the node was down.
        if membership != self.host.links.membership:
            raise ConfigError(
                "membership changes under secure aggregation are not supported yet: "
                "stop the consortium, edit every config, and restart"
            )

    def snapshot(self) -> dict[str, Any]:
        return self.secure.snapshot()

    def commit(self, saved: dict[str, Any] | None) -> None:
        if saved is not None:
            self.secure.commit(saved)

    def restore(self, saved: dict[str, Any] | None) -> None:
        if saved is not None:
            self.secure.restore(saved)
        self.secure.inc = self.host.incarnation

    async def aclose(self) -> None:
        await self.secure.aclose()

"""Plaintext gossip: each neighbour's compressed update, as backlog items on its link.

Every round a site sends each neighbour one ``update`` frame (node.wire.update): the
link's new backlog items W_ji q (the whole backlog when its oldest item went
unacknowledged, node.state.backlog), the count of the neighbour's items it has applied,
its incarnation, and, when it changed, its consensus step (min-gossip, node.gossip.
step_size). A received frame's items are added into s in order; a frame from a
neighbour's new life (it restarted without its checkpoint) resets that link and owes it
one dense copy of x̂.

A frame from a neighbour already a round ahead (its round is one this site has not
reached) is checked when it comes and used once this site has mixed the rounds before
it (:meth:`PlaintextExchange.advance`), as the synchronous algorithm and the simulator
use it. Used at once, its items went into this site's mix of the earlier round, so a run
depended on thread timing: four sites on a loaded machine ended up to 4e-3 apart from
the simulator in 2 runs of 6, exactly where frames came a round early (measured). Its
wait counts the neighbour as heard from the frame's arrival, and this site's next frame,
which acknowledges the items, leaves after that mix either way; only a frame that comes
before this site has sent the round it is in (a deadline passed) is acknowledged a
round later, which may cost a backlog resend (the WAN benchmark's 0.05 s deadline sent
no more bytes than before, beyond the spread between runs). At most HELD_PER_NEIGHBOUR
frames wait a neighbour; a membership change drops them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import torch

from node.errors import (
    EarlyStopError,
    FrameError,
    FutureFrameError,
    StaleFrameError,
    TransportError,
)
from node.exchange.base import SUSPECT_AFTER, Exchange, Host, OutOfRange
from node.gossip.sparse import Sparse
from node.gossip.step_guard import StepGuard
from node.gossip.validation_stop import Heard
from node.state.backlog import Item
from node.state.membership import Membership
from node.transport.send_slots import SendSlots
from node.wire.frames import Frame, seal
from node.wire.update import (
    MAX_INCARNATIONS,
    MAX_SHARED_ITEMS,
    NO_INCARNATION,
    Update,
    Validation,
    decode_update,
    encode_update,
    encoded_item_size,
    link_item_values,
)

Announcement = tuple[int, float]  # (stamp, γ)
VAL_ROUNDS_KEPT = 4  # a neighbour is at most a round or two ahead of us or behind
# Frames a neighbour may have waiting for a round we have not reached (one a round; the
# frame guard admits up to four rounds ahead, and lingering neighbours send more).
HELD_PER_NEIGHBOUR = 8


class PlaintextExchange(Exchange):
    def __init__(
        self,
        host: Host,
        dim: int,
        shared_indices: Callable[[int], torch.Tensor] | None,
        guard_step: StepGuard | None,
        max_frame_bytes: int,
        validation: Callable[[], Validation | None] = lambda: None,
        earliest_stop: int = 0,
    ) -> None:
        """``validation`` gives what this round's frames announce of the validation stop
        (node.gossip.validation_stop; None: it is off); a neighbour's stop announced in a
        round before ``earliest_stop`` (1-based) is one no honest site can make."""
        self.host = host
        self.dim = dim
        self.shared_indices = shared_indices
        self.guard_step = guard_step
        self.budget = max_frame_bytes // 2  # of items per frame; the rest goes next round
        self.xhat0 = host.state.xhat[0].clone()  # every site's, from the shared seed
        self.sends = SendSlots(host.deadline_s, host.supervise)
        # Each neighbour's last announced step, and what each link last carried.
        self.neighbour_step: dict[str, Announcement] = {}
        self.announced: dict[str, Announcement] = {}
        self.validation = validation
        self.earliest_stop = earliest_stop
        # Each neighbour's validation-stop announcements of its last few rounds, by round.
        self.neighbour_val: dict[str, dict[int, Validation]] = {}
        self.retired: dict[str, list[bytes]] = {}  # neighbours' earlier incarnations
        # Links owed a dense copy of x̂ (a neighbour restarted from nothing); sent only
        # when no training thread is writing x̂.
        self.resend_due: set[str] = set()
        # (sender, round, decoded update) of frames from neighbours a round ahead, checked,
        # in arrival order: used at the round they belong to (:meth:`advance`); at most
        # HELD_PER_NEIGHBOUR a neighbour, so a member can hold no more of our memory.
        self.held: list[tuple[str, int, Update]] = []

    @property
    def peers(self) -> set[str]:
        return set(self.host.links.neighbours)

    def handle(self, frame: Frame) -> None:
        links = self.host.links
        if frame.topic != "update" or frame.sender not in links.inbound:
            raise FrameError(f"unexpected {frame.topic!r} frame from {frame.sender}")
        update = decode_update(frame.payload, self.dim, self.shared_indices, frame.round)
        if frame.round > self.host.round:  # a round ahead: checked now, used once we get there
            self._check(frame.sender, frame.round, update)
            if sum(sender == frame.sender for sender, _, _ in self.held) >= HELD_PER_NEIGHBOUR:
                raise FutureFrameError(
                    f"{frame.sender} sent more than {HELD_PER_NEIGHBOUR} frames ahead of our "
                    f"round {self.host.round}",
                    frame.round,
                )
            links.heard[frame.sender] = max(links.heard[frame.sender], frame.round)
            self.held.append((frame.sender, frame.round, update))
            return
        self._use(frame.sender, frame.round, update)

    def advance(self, round: int) -> None:
        """This site has reached ``round`` (mixed the ones before it): use the frames held
        for it and earlier, by round and then in the order they came. One refused now (the
        neighbour's life changed since) is counted as at arrival; the rest are still used."""
        due = sorted((h for h in self.held if h[1] <= round), key=lambda h: h[1])
        if not due:
            return
        self.held = [h for h in self.held if h[1] > round]
        for sender, round_, update in due:
            try:
                self._use(sender, round_, update)
            except FrameError as exc:
                self.host.count_rejection(exc, sender)

    def _check(self, sender: str, round: int, update: Update) -> None:
        """What refuses a frame whatever round it is used in: a previous life of the
        neighbour, or a stop announced before any site can stop."""
        if update.inc in self.retired.get(sender, ()):
            raise StaleFrameError(f"frame from a previous life of {sender}")
        if (
            update.val is not None
            and update.val.estimate is None
            and round + 1 < self.earliest_stop
        ):
            raise EarlyStopError(
                f"{sender} announced a stop in round {round + 1}, before "
                f"round {self.earliest_stop}, the first any site can stop in"
            )

    def _use(self, sender: str, round: int, update: Update) -> None:
        """Apply a checked frame of this round or an earlier one; a FrameError leaves
        every state untouched."""
        links = self.host.links
        if sender not in links.inbound:  # removed since the frame came
            raise FrameError(f"a frame from {sender}, no longer a neighbour")
        self._check(sender, round, update)
        known = links.incarnation.get(sender)
        retired = self.retired.setdefault(sender, [])
        if known is not None and known != update.inc:
            if len(retired) >= MAX_INCARNATIONS:
                # A real site restarts from nothing rarely; one that changes its id every
                # frame would buy a dense copy of our x̂ each time.
                raise StaleFrameError(f"{sender} changed its incarnation too often")
            retired.append(known)
            links.reincarnate(sender, self.xhat0, self.host.state.s[0])
            self.resend_due.add(sender)
            if not self.host.training:
                self._resend_pending()
            for table in (self.neighbour_step, self.announced):
                table.pop(sender, None)  # a fresh site has heard no step from us
            self.host.emit(
                "incarnation",
                peer=sender,
                round=round,
                detail="neighbour restarted without its checkpoint; link reset",
            )
        if update.step is not None:
            # The newest stamp wins, and within it the smallest step (a late, reordered
            # frame does not undo a newer announcement).
            old = self.neighbour_step.get(sender)
            if old is None or (update.step[0], -update.step[1]) > (old[0], -old[1]):
                self.neighbour_step[sender] = update.step
        if update.val is not None:
            said = self.neighbour_val.setdefault(sender, {})
            said[round] = update.val
            for stale in sorted(said)[:-VAL_ROUNDS_KEPT]:
                del said[stale]
        links.incarnation[sender] = update.inc
        links.inbound[sender].accept(update.items, self.host.state.s[0])
        if update.echo == self.host.incarnation:  # an ack for our previous life means nothing
            links.out[sender].ack(update.ack)
        links.heard[sender] = max(links.heard[sender], round)

    def contribute(self, t: int, q: Sparse) -> None:
        """W_ji q onto every out-link (a link owed a dense copy of x̂ gets that instead)."""
        links = self.host.links
        row = q.row(0)
        idx = None if row.indices is None else row.indices.reshape(-1).clone()
        with torch.no_grad():
            for peer in links.neighbours:
                if peer in self.resend_due:
                    continue  # its dense copy of x̂, which holds q already, goes instead
                values, quantum = link_item_values(row, links.weight[peer])
                links.out[peer].push(idx, values.clone(), row.shared_round, quantum)
            self._resend_pending()

    def _resend_pending(self) -> None:
        """Send the dense copies of x̂ owed since neighbours restarted from nothing."""
        links = self.host.links
        for peer in sorted(self.resend_due):
            if peer in links.out:
                links.resend_all(peer, self.host.state.xhat[0])
        self.resend_due.clear()

    async def send(self, t: int, clock: int | None = None) -> None:
        """Each neighbour's frame for round t. ``clock`` is the round the backlog's resend
        rule counts from (default ``t``; lingering after the last round counts on)."""
        host, links = self.host, self.host.links
        at = t if clock is None else clock

        async def one(peer: str) -> bool:
            link = links.out[peer]
            items: list[Item] = []
            size = shared = 0
            for item in link.frame(at):
                item_bytes = encoded_item_size(item)
                shared += item.shared_round is not None
                if items and (size + item_bytes > self.budget or shared > MAX_SHARED_ITEMS):
                    break  # the rest goes next round: the receiver applies in order
                items.append(item)
                size += item_bytes
            step = None
            if self.guard_step is not None:
                stamp, agreed = self.guard_step.announcement()
                mine = (stamp, float(agreed[0]))
                if self.announced.get(peer) != mine:
                    step = mine
            inc = (host.incarnation, links.incarnation.get(peer, NO_INCARNATION))
            payload = encode_update(
                self.dim, links.acked[peer], items, step, inc, self.validation()
            )
            try:
                await host.send_body(peer, seal(host.identity, t, "update", payload))
            except TransportError as exc:
                host.emit("send_failed", peer=peer, round=t, detail=str(exc))
                return False
            link.mark_sent(items, at)
            if step is not None:
                self.announced[peer] = step
            return True

        # A slow reader's send goes on past the deadline without holding the round; until
        # it ends that neighbour gets no new frame, and its items wait in the backlog.
        await asyncio.gather(*(self.sends.run(p, one(p)) for p in links.neighbours))

    def suspected(self) -> set[str]:
        """SUSPECT_AFTER rounds in a row without the neighbour's frame."""
        links = self.host.links
        return {p for p in links.neighbours if links.silent[p] >= SUSPECT_AFTER}

    def waiting_for(self, t: int, suspected: set[str], out_of_range: OutOfRange) -> list[str]:
        links = self.host.links
        behind = [p for p in links.neighbours if links.heard[p] < t and not out_of_range(p, t)]
        if suspected.issuperset(links.neighbours):
            # Cut off from every neighbour (not yet started, or down): keep to one round per
            # deadline instead of racing to the last round alone, so that the site is near
            # the others' round when they appear and they catch up with it.
            return behind
        return [p for p in behind if p not in suspected]

    async def resolve(self, t: int) -> set[str]:
        """Items are added into s as they arrive: round t holds whoever was heard."""
        links = self.host.links
        return {p for p in links.neighbours if links.heard[p] >= t}

    async def linger(self, last: int, clock: int) -> bool:
        # A neighbour still behind waits for our frames; what it lost goes again on the
        # backlog's own schedule, one linger step counting as a round.
        if any(self.host.links.heard[p] < last for p in self.host.links.neighbours):
            await self.send(last, clock=clock)
        return False

    def rewire(self, membership: Membership) -> None:
        self.neighbour_step = {}  # a new graph's steps are derived and announced afresh
        # Frames held from a round ahead belong to the old graph: its steps, and links
        # that may be gone. A neighbour that stays sends their items again (unacknowledged).
        self.held = []

    def heard_steps(self, stamp: int) -> list[float]:
        inbound = self.host.links.inbound
        return [v for p, (s, v) in self.neighbour_step.items() if p in inbound and s == stamp]

    def heard_validation(self, t: int) -> Heard:
        """The neighbours' announcements of round ``t``, mixed (the estimates mix round by
        round, so a neighbour a round ahead is read at ``t``); a stop heard at any earlier
        round stands, and a stopped neighbour's estimate is not mixed."""
        loss, rows, weight, told = 0.0, 0.0, 0.0, False
        links = self.host.links
        for peer, said in self.neighbour_val.items():
            if peer not in links.inbound:
                continue
            if any(v.estimate is None for r, v in said.items() if r <= t):
                told = True
            elif t in said and (estimate := said[t].estimate) is not None:
                w = links.weight[peer]
                loss, rows, weight = loss + w * estimate[0], rows + w * estimate[1], weight + w
        return Heard((loss, rows), weight, told)

    def snapshot(self) -> dict[str, Any]:
        return {"heard": dict(self.neighbour_step), "announced": dict(self.announced)}

    def restore(self, saved: dict[str, Any] | None) -> None:
        if saved is None:
            return
        heard, announced = saved.get("heard", {}), saved.get("announced", {})
        self.neighbour_step = {p: (int(g), float(v)) for p, (g, v) in heard.items()}
        self.announced = {p: (int(g), float(v)) for p, (g, v) in announced.items()}

    async def aclose(self) -> None:
        await self.sends.aclose()

"""Which round a site goes to next, and which neighbours it still waits for.

A restarted (or slow) site must catch up with neighbours that kept going, but no single
member may move it: a member chooses the round number it signs. The rules, all from what
the node already has (admitted frames per neighbour, and the rounds that neighbours'
too-far frames claim):

- a neighbour is where its admitted frames say; a claim counts only for a neighbour we
  hear nothing admissible from (it is out of our window, so its frames will not come);
- the node catches up to its *slowest* live neighbour; resting on one neighbour's word
  alone (the only live one) it jumps at most :data:`CATCH_UP_MAX` rounds, with two or
  more, each signed by its own site, it goes all the way at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from node.exchange.base import Exchange
from node.state.links import Links
from node.wire.frames import FrameGuard

# The most rounds one catch-up may skip on a single neighbour's word.
CATCH_UP_MAX = 16


class Pacing:
    """The claims of neighbours' too-far frames, and the catch-up rules above."""

    def __init__(self, guard: FrameGuard) -> None:
        self.guard = guard
        self.claimed: dict[str, int] = {}  # rounds named by neighbours' too-far frames

    def claim(self, peer: str, round: int) -> None:
        """A too-far frame from ``peer``, signed on its own connection, names ``round``.
        Kept apart from ``heard`` (admitted frames): a claim alone must not stop us
        waiting for the sender's real frame of our round."""
        self.claimed[peer] = max(self.claimed.get(peer, -1), round)

    def out_of_range(self, links: Links, peer: str, t: int) -> bool:
        """Whether ``peer`` is beyond our lead by its own signed claim and has sent no
        admissible frame lately: its frames for our round will not come (we restarted
        and are catching up), so it is not waited for. A member that also claims a far
        round while gossiping normally is still waited for."""
        far = self.claimed.get(peer, -1) > t + self.guard.lead
        return far and links.heard[peer] < max(t - self.guard.window, 0)

    def catch_up_target(self, links: Links, suspected: set[str], t: int) -> int:
        """The slowest live neighbour's round, or t without one."""
        live = [
            max(links.heard[p], self.claimed.get(p, -1))
            if self.out_of_range(links, p, t)
            else links.heard[p]
            for p in links.neighbours
            if p not in suspected
        ]
        target = min(live, default=t)
        if len(live) < 2:
            target = min(target, t + 1 + CATCH_UP_MAX)
        return target

    def next_round(self, links: Links, suspected: set[str], t: int) -> int:
        """The round after t: t + 1, or further when every live neighbour is ahead."""
        return max(t + 1, self.catch_up_target(links, suspected, t))

    async def wait_for_round(
        self,
        t: int,
        links: Links,
        exchange: Exchange,
        heard: asyncio.Event,
        stopping: asyncio.Event,
        deadline_s: float,
    ) -> None:
        """Wait, at most ``deadline_s``, for round t's part from every neighbour the
        exchange still waits for (not suspected down, not out of range); then count each
        neighbour's silence (a round it sent nothing for)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        out_of_range = functools.partial(self.out_of_range, links)
        while True:
            waiting = exchange.waiting_for(t, exchange.suspected(), out_of_range)
            remaining = deadline - loop.time()
            if not waiting or remaining <= 0 or stopping.is_set():
                break
            heard.clear()
            try:
                await asyncio.wait_for(heard.wait(), remaining)
            except TimeoutError:
                break
        for p in links.neighbours:
            links.silent[p] = links.silent[p] + 1 if links.heard[p] < t else 0


async def linger(
    exchange: Exchange, links: Links, rounds: int, deadline_s: float, stopping: asyncio.Event
) -> None:
    """After the last round, keep answering for up to two deadlines, so that neighbours
    still finishing get our last frames: until none is behind and the exchange owes
    nothing (or the node is told to stop)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 2 * deadline_s
    last = clock = rounds - 1
    while loop.time() < end and not stopping.is_set():
        clock += 1
        unresolved = await exchange.linger(last, clock)
        behind = [p for p in links.neighbours if links.heard[p] < last]
        if not behind and not unresolved:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.5)

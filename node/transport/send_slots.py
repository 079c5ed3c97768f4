"""One frame in flight per peer, and a bound on how long a round waits for it.

The transports' deadlines are about progress (each chunk must move within the timeout),
so a large frame on a slow link still arrives. The flip side: a member that reads just
under the timeout keeps every send to it going for several timeouts, and a round that
awaited its sends would stretch with it. So a round waits for a send at most ``limit_s``
(the round deadline); a send still going then runs on in the background, and nothing more
is sent to that peer until it ends (``busy``), so slow readers never stack frames up in
our memory. What the send was for (marking backlog items sent, say) happens when it
finishes, however late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class SendSlots:
    """Per-peer send tasks; see the module docstring."""

    def __init__(self, limit_s: float, supervise: Callable[[asyncio.Task[Any]], object]) -> None:
        self.limit_s = limit_s
        self.supervise = supervise  # owns an unexpected failure of a send task
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def busy(self, peer: str) -> bool:
        """Whether a send to ``peer`` from an earlier call is still going."""
        task = self._tasks.get(peer)
        return task is not None and not task.done()

    async def run(
        self, peer: str, work: Coroutine[Any, Any, bool], queue: bool = False
    ) -> bool | None:
        """Run ``work`` (a send and what follows it) as ``peer``'s send. Its result when it
        ends within ``limit_s``; None when it is still going then (it goes on), or when
        ``peer`` is busy (``work`` is then not started). With ``queue``, a busy peer is
        waited for first, within the same ``limit_s`` (for sends that must follow each
        other)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.limit_s
        try:
            while self.busy(peer):
                remaining = end - loop.time()
                if not queue or remaining <= 0:
                    work.close()
                    return None
                await asyncio.wait({self._tasks[peer]}, timeout=remaining)
        except asyncio.CancelledError:
            work.close()  # never started: no "never awaited" warning
            raise
        task = loop.create_task(work)
        self.supervise(task)
        self._tasks[peer] = task
        done, _ = await asyncio.wait({task}, timeout=max(end - loop.time(), 0.0))
        return task.result() if done else None

    async def aclose(self) -> None:
        """Stop what is still being sent (the node is shutting down)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

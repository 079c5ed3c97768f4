"""The node's background tasks: a failure stops the node cleanly instead of leaving it deaf.

The receive loop, send slots and the secure exchange's timers run beside the round loop.
An unexpected exception in one of them must not leave the node running with, say, no
receiver; it stops the node at the next round boundary (checkpointed, nothing half
applied) and the node's run ends with :class:`~node.errors.NodeCrashedError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from node.errors import NodeCrashedError


class Supervisor:
    """Owns the failure of every task it is given."""

    def __init__(self, stopping: asyncio.Event, heard: asyncio.Event) -> None:
        self.stopping = stopping
        self.heard = heard  # set too, so that a round's wait wakes up at once
        self.crash: BaseException | None = None  # the first failure

    def supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        def done(finished: asyncio.Task[None]) -> None:
            if finished.cancelled() or finished.exception() is None:
                return
            if self.crash is None:
                self.crash = finished.exception()
            self.stopping.set()
            self.heard.set()

        task.add_done_callback(done)
        return task

    def raise_if_crashed(self, round: int, emit: Callable[..., Any]) -> None:
        """After the run: log and raise the first failure, if a task failed."""
        if self.crash is None:
            return
        detail = f"{type(self.crash).__name__}: {self.crash}"
        emit("crashed", round=round, detail=detail)
        raise NodeCrashedError(
            f"node stopped at round {round}: an internal task failed ({detail}); "
            "its last checkpoint is intact and a restart resumes from it"
        ) from self.crash

"""One site's node: the asyncio round loop and its task group.

A round: train (worker thread) → q = C(x − x̂), x̂ += q, s += W_ii q → the exchange takes
this site's part (:class:`node.exchange.base.Exchange`: plaintext gossip or secure
aggregation) → **checkpoint** → the exchange sends round t → wait for the neighbours'
parts until the deadline → the exchange resolves the round into s → x += γ(s − x̂) →
**checkpoint**.

The first checkpoint is a write-ahead record: once q is in x̂ and in the outgoing state
on disk, a node killed while sending resends exactly that q after restart, never a
different one, so every neighbour's s stays consistent with our x̂. What the node tells
neighbours it has applied (acks, verdicts) is what the last checkpoint holds: each part's
``commit`` runs after the write. The parts a config builds are in :mod:`node.assembly`;
the model side of a round is :mod:`node.learner`, catch-up is :mod:`node.pacing`, and
what operators see is :mod:`node.site_log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import secrets
import signal
import sys
import time
from typing import Any, TextIO

from crypto.identity import SiteIdentity, load_key
from node import site_checkpoint
from node.assembly import SiteParts
from node.audit.log import AUDITED, AuditLog, config_digest
from node.config import NodeConfig
from node.errors import FrameError
from node.exchange.base import SUSPECT_AFTER
from node.exchange.secure import SecureExchange
from node.exchange.secure_round import SecureRound
from node.inbox import receive
from node.key_admin import CHECKPOINT_FILE
from node.learner import Learner
from node.pacing import CATCH_UP_MAX, Pacing, linger
from node.reload import check_addresses, reload
from node.site_log import RoundReport, SiteLog
from node.state import checkpoint
from node.state.links import Links
from node.state.lock import state_lock
from node.state.membership import Membership
from node.tasks import Supervisor
from node.training.custom import TrainingLoop
from node.transport.base import Transport
from node.wire.frames import PREFIX_BYTES, FrameGuard, peek
from node.wire.update import INCARNATION_BYTES
from node.wiring import site_exchange, site_transport

__all__ = ["CATCH_UP_MAX", "SUSPECT_AFTER", "Node"]


class Node:
    """A long-lived site process; see the module docstring for the round protocol."""

    def __init__(
        self,
        config: NodeConfig,
        transport: Transport | None = None,
        log: TextIO | None = None,
        status: TextIO | None = None,
        loop: TrainingLoop | None = None,
    ) -> None:
        """``loop``: the site's own PyTorch training (node.training.custom), when its
        ``[data] source`` is ``custom:NAME``."""
        self.config = config
        self.identity: SiteIdentity = load_key(config.site.key)
        me = self.identity.peer_id
        membership = Membership.of(config)
        weight = membership.weights(me)
        check_addresses(config, weight, me)
        self.index = config.consortium.members.index(me)
        self.log = SiteLog(config, self.index, me, log or sys.stdout, status or sys.stderr)
        parts = SiteParts.build(config, self.index, membership, loop)
        for line in parts.skipped:  # a broken case is skipped, said once, and training goes on
            self.log.emit("case_skipped", detail=line)
        self.learner = Learner(parts, config, self.emit)
        self.state, self.dp, self.dim = self.learner.state, self.learner.dp, self.learner.dim
        self.links = Links(me, membership, self.state.xhat[0], weight)
        # This life's incarnation id: a checkpoint restores it, a start from nothing draws
        # a new one (node.state.links).
        self.incarnation = secrets.token_bytes(INCARNATION_BYTES)
        self.deadline_s = config.gossip.deadline_s
        self._training = False
        self.guard = FrameGuard(config.consortium.members)
        self.pacing = Pacing(self.guard)
        self.round, self.phase, self.bytes_sent, self.bytes_received = 0, "mixed", 0, 0
        self._budget_reported = False
        self.heard = asyncio.Event()
        self.last_frame: dict[str, float] = {}  # event-loop time of each peer's last frame
        self.stopping = asyncio.Event()
        self.tasks = Supervisor(self.stopping, self.heard)
        self.audit = AuditLog(config.site.state_dir, self.identity)
        self._reload: NodeConfig | None = None
        self._reload_requested = False
        self.ckpt_path = config.site.state_dir / CHECKPOINT_FILE
        self.transport = site_transport(config, self.identity, self.index, transport)
        self.exchange = site_exchange(self, config, membership, self.learner, self.log)
        self.peer_set = self.exchange.peers
        check_addresses(config, self.peer_set, me)

    # -- what the exchange and operators see of the node (node.exchange.base.Host) ----------

    @property
    def secure(self) -> SecureExchange | None:
        """Secure aggregation's protocol state, in secure mode (for operators and tests)."""
        return self.exchange.secure if isinstance(self.exchange, SecureRound) else None

    @property
    def training(self) -> bool:
        return self._training

    def emit(self, event: str, **fields: Any) -> None:
        self.log.emit(event, **fields)
        if event in AUDITED:
            self.audit.append(event, **fields)

    def rejections(self) -> dict[str, int]:
        """Every refused input so far, by reason: frames the guard refused, frames refused
        after admission, and what the transport refused below them."""
        total = self.guard.rejected + self.log.rejected + self.transport.rejected
        return dict(sorted(total.items()))

    async def send_body(self, peer: str, body: bytes) -> None:
        await self.transport.send(peer, body)
        size = PREFIX_BYTES + len(body)
        self.bytes_sent += size
        try:
            round, topic = peek(body)
        except FrameError:  # not a frame of ours (a test's raw bytes): logged as such
            round, topic = -1, "?"
        self.audit.frame("sent", peer, round, topic, body, size)

    def supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        return self.tasks.supervise(task)

    def move_to(self, round: int) -> None:
        """On to ``round``: the next after a mix, or further (caught up with neighbours);
        the frame guard and the exchange move with it."""
        self.round = round
        self.guard.advance(round)
        self.exchange.advance(round)

    def count_rejection(self, exc: FrameError, peer: str) -> None:
        self.log.count_rejection(exc, peer)

    def catch_up_target(self, t: int) -> int:
        return self.pacing.catch_up_target(self.links, self.exchange.suspected(), t)

    # -- membership (node.reload) -----------------------------------------------------------

    def request_reload(self, config: NodeConfig | None = None) -> None:
        """Apply ``config`` (or the re-read config file) at the next round boundary."""
        self._reload = config
        self._reload_requested = True

    # -- checkpoints (node.site_checkpoint) -----------------------------------------------

    def save(self) -> None:
        """Checkpoint atomically; then each part may announce what the checkpoint holds."""
        began = time.perf_counter()
        site_checkpoint.save(self)
        self.log.metrics.checkpointed(time.perf_counter() - began)

    def restore(self) -> bool:
        """Resume from the checkpoint (False: there is none)."""
        return site_checkpoint.restore(self)

    # -- the protocol -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run to ``rounds`` (resuming from the checkpoint), then linger to serve the
        neighbours' last frames; SIGTERM/SIGINT stop cleanly after a checkpoint. The
        state directory is this node's alone while it runs (node.state.lock)."""
        checkpoint.private_dir(self.config.site.state_dir)
        with state_lock(self.config.site.state_dir):
            try:
                return await self._run()
            finally:
                self.audit.close()

    async def _run(self) -> dict[str, Any]:
        resumed = self.restore()
        self.learner.reconcile_ledger(resumed)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Signal handlers exist only in the main thread; tests run nodes elsewhere.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.log.start()
        self.audit.append("config", digest=config_digest(self.config))
        await self.transport.start()
        self.transport.set_peers({p: self.config.consortium.peers[p] for p in self.peer_set})
        self.emit(
            "start",
            peer_id=self.identity.peer_id,
            listen=self.transport.listen_addr,
            resumed=resumed,
            round=self.round,
            neighbours=len(self.links.neighbours),
            gamma=self.learner.gamma,
            validation_stop=self.learner.stop_text(),
            cpu_s=_cpu_s(),
        )
        receiver = self.supervise(asyncio.create_task(receive(self)))
        try:
            await self.exchange.join()
            while self.round < self.config.train.rounds and not self.stopping.is_set():
                await self._round()
            gossip, rounds = self.config.gossip, self.config.train.rounds
            await linger(self.exchange, self.links, rounds, gossip.deadline_s, self.stopping)
        finally:
            receiver.cancel()
            self.log.stop_serving()
            await self.exchange.aclose()
            await self.transport.aclose()
            self.audit.flush()
        try:
            self.tasks.raise_if_crashed(self.round, self.emit)
        finally:
            self.audit.flush()
        accuracy = self.learner.accuracy()
        result: dict[str, Any] = {
            "round": self.round,
            "accuracy": accuracy,
            "bytes_sent": self.bytes_sent,
        }
        regions = self.learner.regions()
        if regions is not None:  # a segmentation site: Dice and HD95 per region
            result["regions"] = regions
        if self.dp is not None:
            result.update(eps_spent=self.learner.eps_spent, dp_budget_spent=self.dp.spent[0])
        self.emit(
            "finish",
            **result,
            rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            cpu_s=_cpu_s(),
            audit_s=round(self.audit.busy_s, 6),
            rejected=self.rejections(),
        )
        self.audit.flush()
        await self.log.aclose()
        return result

    async def _round(self) -> None:
        t, learner = self.round, self.learner
        began = time.perf_counter()
        loss: float | None = None
        if self.phase == "mixed" and self._reload_requested:
            config, self._reload, self._reload_requested = self._reload, None, False
            reload(self, config)
        if self.phase == "mixed":
            self._training = True
            try:
                loss, q = await asyncio.to_thread(learner.train_and_compress, t)
            finally:
                self._training = False
            learner.add_own(q, self.links.weight[self.identity.peer_id])
            self.exchange.contribute(t, q)
            self.phase = "pushed"
            self.save()
        await self.exchange.send(t)
        await self.pacing.wait_for_round(
            t, self.links, self.exchange, self.heard, self.stopping, self.deadline_s
        )
        included = await self.exchange.resolve(t)
        learner.mix(t, self.exchange.heard_steps)
        learner.mix_validation(t, self.exchange.heard_validation(t))
        self.phase = "mixed"
        self.move_to(self.pacing.next_round(self.links, self.exchange.suspected(), t))
        absent = [p for p in self.links.neighbours if p not in included]
        self.audit.end_round(t + 1, absent, learner.eps_spent if self.dp else None)
        self.save()  # holds the audit entries not yet synced (node.audit.log)
        self._report(t, loss, len(absent), began)

    def _report(self, t: int, loss: float | None, missed: int, began: float) -> None:
        """Round t's event and status line (node.site_log)."""
        rounds, learner = self.config.train.rounds, self.learner
        if learner.budget_spent and not self._budget_reported:
            self._budget_reported = True
            self.emit("dp_budget_spent", round=t + 1, eps_spent=self.learner.eps_spent)
        due = (t + 1) % self.config.train.eval_every == 0 or self.round >= rounds
        self.log.round(
            RoundReport(
                round=t + 1,
                rounds=rounds,
                loss=learner.public_loss(loss),
                trained=loss is not None and not math.isnan(loss),
                accuracy=learner.accuracy() if due else None,
                latency_s=time.perf_counter() - began,
                neighbours=len(self.links.neighbours),
                missed=missed,
                bytes_sent=self.bytes_sent,
                bytes_received=self.bytes_received,
                audit_s=self.audit.busy_s,
                eps_spent=self.learner.eps_spent,
                eps_text=learner.eps_text(),
                rejected=self.rejections(),
            ),
            self.identity.peer_id,
        )


def _cpu_s() -> float:
    """CPU seconds this process has used (user + system), for the start and finish events."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)

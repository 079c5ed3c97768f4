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
``commit`` runs after the write. The parts a config builds are in :mod:`node.assembly`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import torch

from crypto.errors import KeyFileError
from crypto.identity import SiteIdentity, load_key
from crypto.keyfile import read_secret
from node.assembly import SiteParts
from node.config import NodeConfig, load_config
from node.errors import ConfigError, FrameError, FutureFrameError, NodeCrashedError
from node.exchange.base import SUSPECT_AFTER, Exchange
from node.exchange.plaintext import PlaintextExchange
from node.exchange.secure import SecureExchange
from node.exchange.secure_round import SecureRound
from node.gossip.choco import add_self_contribution, mix_step
from node.gossip.compress import require_shared_slots, shared_indices
from node.gossip.sparse import Sparse
from node.gossip.step_size import StepGuard, guarded_compress
from node.key_admin import CHECKPOINT_FILE, encryption_key_path, require_key
from node.state import checkpoint
from node.state.links import Links
from node.state.membership import Membership
from node.training.custom import TrainingLoop
from node.transport.base import Transport
from node.transport.faulty import FaultyTransport
from node.wire.frames import PREFIX_BYTES, Frame, FrameGuard
from node.wire.update import INCARNATION_BYTES

if TYPE_CHECKING:
    from node.telemetry import MqttTelemetry

__all__ = ["CATCH_UP_MAX", "SUSPECT_AFTER", "Node", "main"]
# The most rounds one catch-up may skip (see Node._next_round).
CATCH_UP_MAX = 16


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
        self.log_stream = log or sys.stdout
        self.status_stream = status or sys.stderr
        self.identity: SiteIdentity = load_key(config.site.key)
        me = self.identity.peer_id
        membership = Membership.of(config)
        weight = membership.weights(me)
        self._check_addresses(config, weight, me)
        self.index = config.consortium.members.index(me)
        parts = SiteParts.build(config, self.index, membership, loop)
        self.parts = parts
        self.layout, self.trainer, self.dp = parts.layout, parts.trainer, parts.dp
        self.ledger, self.tracker, self.state = parts.ledger, parts.tracker, parts.state
        self.compressor, self.guard_step, self.gamma = (
            parts.compressor,
            parts.guard_step,
            parts.gamma,
        )
        self.dim = parts.dim
        self.links = Links(me, membership, self.state.xhat[0], weight)
        # This life's incarnation id: a checkpoint restores it, a start from nothing draws
        # a new one (node.state.links).
        self.incarnation = secrets.token_bytes(INCARNATION_BYTES)
        self.deadline_s = config.gossip.deadline_s
        self._training = False
        self.claimed: dict[str, int] = {}  # rounds named by neighbours' too-far frames
        self.guard = FrameGuard(config.consortium.members)
        self.round = 0
        self.phase = "mixed"
        self.bytes_sent = 0
        self._budget_reported = False
        self.rejected: Counter[str] = Counter()
        self._rejections_logged: set[tuple[str | None, str]] = set()
        self._rejections_quiet: Counter[str] = Counter()  # counted, not logged, this round
        self.heard = asyncio.Event()
        self.last_frame: dict[str, float] = {}  # event-loop time of each peer's last frame
        self.stopping = asyncio.Event()
        self._crash: BaseException | None = None  # a supervised task's failure
        self._reload: NodeConfig | None = None
        self._reload_requested = False
        self.ckpt_path = config.site.state_dir / CHECKPOINT_FILE
        self.telemetry = self._telemetry(config, me)
        inner = transport or self._libp2p()
        faults = config.faults
        self.transport: Transport = (
            FaultyTransport(
                inner, faults, config.consortium.members, config.consortium.seed * 31 + self.index
            )
            if faults.drop or faults.delay_ms or faults.partitions
            else inner
        )
        self.exchange = self._exchange(membership)
        self.peer_set = self.exchange.peers
        self._check_addresses(config, self.peer_set, me)

    def _exchange(self, membership: Membership) -> Exchange:
        indices = shared_indices(self.compressor, self.dim)
        mode = self.config.gossip.secure
        if mode == "off":
            return PlaintextExchange(
                self, self.dim, indices, self.guard_step, self.config.gossip.max_frame_bytes
            )
        require_shared_slots(self.compressor, mode)
        assert indices is not None  # a shared-index compressor, checked above
        require_key(self.config)  # a lost encryption key is never silently regenerated
        return SecureRound(
            self,
            mode,
            encryption_key_path(self.config),
            membership,
            self.config.consortium.seed,
            indices,
            set(self.config.consortium.peers),
            self._count_rejection,
        )

    @property
    def secure(self) -> SecureExchange | None:
        """Secure aggregation's protocol state, in secure mode (for operators and tests)."""
        return self.exchange.secure if isinstance(self.exchange, SecureRound) else None

    @property
    def training(self) -> bool:
        return self._training

    def _count_rejection(self, exc: FrameError, peer: str) -> None:
        """A refusal found after admission (e.g. a sum that fails to decrypt)."""
        self.rejected[exc.reason] += 1
        self._note_rejection(exc, peer)

    @classmethod
    def _telemetry(cls, config: NodeConfig, me: str) -> MqttTelemetry | None:
        """The MQTT publisher when ``[telemetry]`` names a broker (aiomqtt loads only then)."""
        if config.telemetry.mqtt is None:
            return None
        from node.telemetry import MqttTelemetry

        return MqttTelemetry(
            config.telemetry.mqtt,
            me,
            config.telemetry.topic,
            config.telemetry.username,
            cls._broker_password(config),
            config.telemetry.ca_file,
        )

    @staticmethod
    def _broker_password(config: NodeConfig) -> str | None:
        """The MQTT password, from its 0600 file (never from the config itself)."""
        if config.telemetry.password_file is None:
            return None
        try:
            raw = read_secret(config.telemetry.password_file)
        except KeyFileError as exc:
            raise ConfigError(f"[telemetry] password_file: {exc}") from None
        return raw.decode().strip()

    async def send_body(self, peer: str, body: bytes) -> None:
        await self.transport.send(peer, body)
        self.bytes_sent += PREFIX_BYTES + len(body)

    @staticmethod
    def _check_addresses(config: NodeConfig, peers: Iterable[str], me: str) -> None:
        missing = [p for p in peers if p != me and p not in config.consortium.peers]
        if missing:
            raise ConfigError(f"no address in [consortium] peers for {missing}")

    def request_reload(self, config: NodeConfig | None = None) -> None:
        """Apply ``config`` (or the re-read config file) at the next round boundary."""
        self._reload = config
        self._reload_requested = True

    def _reload_config(self) -> None:
        config, self._reload, self._reload_requested = self._reload, None, False
        try:
            config = config or load_config(self.config.path)
            self.apply_membership(config)
        except ConfigError as exc:
            self.emit("reload_failed", detail=str(exc))

    def apply_membership(self, config: NodeConfig) -> None:
        """Re-weight and resynchronise for a new ``[consortium]``; see node.state.membership."""
        me = self.identity.peer_id
        membership = Membership.of(config)
        if me not in membership.members:
            self.emit("removed", detail="this site is no longer in [consortium] members")
            self.stopping.set()
            return
        weight = membership.weights(me)
        self._check_addresses(config, weight, me)
        self.exchange.rewire(membership)  # may refuse (secure); nothing is changed before
        change = self.links.rewire(membership, weight, self.state.xhat[0], self.state.s[0])
        if self.guard_step is not None:
            # A new graph has another spectrum and diameter: the step is derived afresh.
            self.guard_step.rewire(membership.matrix())
            self.gamma = float(self.guard_step.gamma[0])
        self.config = replace(self.config, consortium=config.consortium)
        self.guard.set_allowlist(config.consortium.members)
        book = config.consortium.peers
        self.transport.set_peers({p: book[p] for p in self.exchange.peers if p in book})
        self.emit(
            "membership",
            members=len(config.consortium.members),
            neighbours=len(self.links.neighbours),
            added=list(change.added),
            removed=list(change.removed),
            resynced=list(change.added + change.reweighted),
        )

    def _libp2p(self) -> Transport:
        from node.transport.p2p import P2PTransport

        return P2PTransport(
            self.identity,
            self.config.site.listen,
            self.config.gossip.max_frame_bytes,
            timeout_s=max(2.0, self.config.gossip.deadline_s),
        )

    # -- logging ----------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 4), "event": event, "node": self.index, **fields}
        self.log_stream.write(json.dumps(record) + "\n")
        self.log_stream.flush()
        if self.telemetry is not None:
            self.telemetry.publish(record)

    def rejections(self) -> dict[str, int]:
        """Every refused input so far, by reason: frames the guard refused, frames refused
        after admission, and what the transport refused below them."""
        total = self.guard.rejected + self.rejected + self.transport.rejected
        return dict(sorted(total.items()))

    def _note_rejection(self, exc: FrameError, peer: str | None) -> None:
        """Log a rejected frame, once per (peer, reason) and round: a member flooding bad
        frames is counted in full (``rejected`` in the round and finish events) but cannot
        flood the log or the telemetry broker with one line each."""
        key = (peer, exc.reason)
        if key in self._rejections_logged:
            self._rejections_quiet[exc.reason] += 1
            return
        self._rejections_logged.add(key)
        self.emit("rejected", reason=exc.reason, peer=peer, detail=str(exc)[:200])

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        """Checkpoint atomically; then each part may announce what the checkpoint holds."""
        links, exchange = self.links.snapshot(), self.exchange.snapshot() or {}
        plain = isinstance(self.exchange, PlaintextExchange)
        checkpoint.save(
            self.ckpt_path,
            {
                "round": self.round,
                "phase": self.phase,
                "incarnation": self.incarnation,
                "x": self.state.x,
                "xhat": self.state.xhat,
                "s": self.state.s,
                "links": links,
                "bytes_sent": self.bytes_sent,
                "eps_spent": self.eps_spent,
                "trainer": self.trainer.state_dict(),
                "tracker": None if self.tracker is None else self.tracker.previous.clone(),
                "secure": None if plain else exchange,
                "step": None
                if self.guard_step is None
                else {"guard": self.guard_step.state_dict(), **(exchange if plain else {})},
            },
        )
        self.links.commit(links)
        self.exchange.commit(exchange)

    def restore(self) -> bool:
        """Resume from the checkpoint; a config whose membership changed while the node was
        down is applied afterwards, as a reload would be."""
        saved = checkpoint.load(self.ckpt_path)
        if saved is None:
            return False
        if saved["x"].shape != self.state.x.shape:
            raise ConfigError(f"checkpoint {self.ckpt_path} is for a different model")
        with torch.no_grad():
            self.state.x.copy_(saved["x"])
            self.state.xhat.copy_(saved["xhat"])
            self.state.s.copy_(saved["s"])
        self.round, self.phase = int(saved["round"]), str(saved["phase"])
        self.incarnation = bytes(saved.get("incarnation", self.incarnation))
        self.links = Links.restore(self.identity.peer_id, saved["links"], self.state.xhat[0])
        self.bytes_sent = int(saved["bytes_sent"])
        self.trainer.load_state_dict(saved["trainer"])
        if self.tracker is not None:
            self.tracker.previous.copy_(saved["tracker"])
            self.tracker.sync(self.trainer)
        step = saved.get("step")
        if isinstance(self.exchange, PlaintextExchange):
            self.exchange.restore(None if step is None else step)
        else:
            self.exchange.restore(saved.get("secure"))
        if self.guard_step is not None and step is not None:
            self.guard_step.load_state_dict(step["guard"])
            self.gamma = float(self.guard_step.gamma[0])
        self.guard.advance(self.round)
        if self.links.membership != Membership.of(self.config):
            self.apply_membership(self.config)  # the config was edited while the node was down
        return True

    # -- the protocol -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        async for received in self.transport.incoming():
            try:
                frame = self.guard.admit(
                    received.body, received.peer, self.config.gossip.max_frame_bytes
                )
            except FutureFrameError as exc:
                # Signed by a member on its own connection, so a claim of where it is; the
                # contents are dropped (the backlog resends them once we are in range).
                self._note_rejection(exc, received.peer)
                if received.peer in self.links.heard:
                    # Kept apart from ``heard`` (admitted frames): a claim alone must not
                    # stop us waiting for the sender's real frame of our round.
                    claimed = self.claimed
                    claimed[received.peer] = max(claimed.get(received.peer, -1), exc.round)
                    # It is alive, too: a site catching up must not take the neighbours it
                    # is catching up with for down (secure mode's liveness is frame time).
                    self.last_frame[received.peer] = asyncio.get_running_loop().time()
                    self.heard.set()
                continue
            except FrameError as exc:  # counted by the guard
                self._note_rejection(exc, received.peer)
                continue
            try:
                self._apply(frame)
            except FrameError as exc:
                self._count_rejection(exc, received.peer)
                continue
            self.heard.set()

    def _apply(self, frame: Frame) -> None:
        """Use one admitted frame; a :class:`FrameError` leaves this node's state untouched."""
        self.exchange.handle(frame)

    def _train_and_compress(self, t: int) -> tuple[float, Sparse]:
        """Runs in a worker thread: local training, then CHOCO step 1 (q, and x̂ += q).
        It writes x and x̂ only; s, which the event loop adds neighbours' items into, is
        touched only on the event loop (:meth:`_contribute`)."""
        self.trainer.set_progress(t / self.config.train.rounds)
        before = self._dp_history()
        stats = self.tracker.train(self.trainer) if self.tracker else self.trainer.train()
        after = self._dp_history()
        if self.ledger is not None and after != before:
            # Recorded durably before this round's noised update can leave the site.
            self.ledger.append(t, after)
        if self.config.faults.slow > 1:
            time.sleep(stats.seconds * (self.config.faults.slow - 1))
        with torch.no_grad():
            q = guarded_compress(self.state, self.compressor, t, None, self.guard_step)
        return float(stats.loss.mean()), q

    def _dp_history(self) -> list[tuple[float, float, int]]:
        """This site's DP accountant history, [(σ, q, steps), ...] (empty without DP)."""
        if self.dp is None:
            return []
        history = self.dp.rows[0].engine.accountant.history
        return [(float(sig), float(q), int(n)) for sig, q, n in history]

    def _reconcile_ledger(self, resumed: bool) -> None:
        """Check the checkpoint's budget against the privacy ledger, and continue from the
        ledger when the checkpoint was lost (node.state.privacy_ledger)."""
        if self.ledger is None or self.dp is None:
            return
        continued = self.ledger.check(self._dp_history())
        if continued is not None:
            self.dp.rows[0].engine.accountant.history = list(continued)
            self.emit(
                "privacy_ledger",
                detail="the ledger records more than the checkpoint: ε continues from it",
                eps_spent=self.eps_spent,
            )
            if not resumed:
                # Started over without a checkpoint after spending budget: the generators
                # from the seed file would replay the first life's batches and noise on a
                # new model, and the difference of two releases would cancel the noise.
                row = self.dp.rows[0]
                row.sample_gen.manual_seed(secrets.randbits(62))
                row.noise_gen.manual_seed(secrets.randbits(62))

    def _contribute(self, t: int, q: Sparse) -> None:
        """CHOCO step 2 on the event loop: s += W_ii q, and the exchange takes our part."""
        with torch.no_grad():
            add_self_contribution(
                self.state, q, torch.tensor([self.links.weight[self.identity.peer_id]])
            )
        self.exchange.contribute(t, q)

    def supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Own a background task's failure: an unexpected exception stops the node at the
        next round boundary (checkpointed, nothing half-applied) with a clear error,
        instead of leaving it running but deaf."""

        def done(finished: asyncio.Task[None]) -> None:
            if finished.cancelled() or finished.exception() is None:
                return
            if self._crash is None:
                self._crash = finished.exception()
            self.stopping.set()
            self.heard.set()

        task.add_done_callback(done)
        return task

    def move_to(self, round: int) -> None:
        self.round = round
        self.guard.advance(round)

    def _next_round(self, t: int) -> int:
        """The round after t: t + 1, or further when every live neighbour is ahead (this
        node restarted, or fell behind). It catches up to its *slowest* live neighbour,
        so one member naming a far-future round (it chooses the number it signs) cannot
        move this node, or through it the rest. A jump resting on one neighbour's word
        alone (the only live one) is at most CATCH_UP_MAX rounds; with two or more, each
        signed by its own site, it goes all the way at once (a restarted site must catch
        neighbours that kept going)."""
        return max(t + 1, self.catch_up_target(t))

    def catch_up_target(self, t: int) -> int:
        """The slowest live neighbour's round (see _next_round), or t without one."""
        suspected = self._suspected()
        # A claim counts only from a neighbour we hear nothing admissible from: one that
        # also gossips normally is where its admitted frames say, whatever it claims.
        live = [
            max(self.links.heard[p], self.claimed.get(p, -1))
            if self._out_of_range(p, t)
            else self.links.heard[p]
            for p in self.links.neighbours
            if p not in suspected
        ]
        target = min(live, default=t)
        if len(live) < 2:
            target = min(target, t + 1 + CATCH_UP_MAX)
        return target

    def _suspected(self) -> set[str]:
        return self.exchange.suspected()

    def _out_of_range(self, peer: str, t: int) -> bool:
        """Whether ``peer`` is beyond our lead by its own signed claim and has sent no
        admissible frame lately: its frames for our round will not come (we restarted
        and are catching up), so it is not waited for. A member that also claims a far
        round while gossiping normally is still waited for."""
        far = self.claimed.get(peer, -1) > t + self.guard.lead
        return far and self.links.heard[peer] < max(t - self.guard.window, 0)

    async def _wait_for_round(self, t: int) -> None:
        """Wait for this round's part from every neighbour not suspected to be down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.gossip.deadline_s
        while True:
            waiting = self.exchange.waiting_for(t, self._suspected(), self._out_of_range)
            remaining = deadline - loop.time()
            if not waiting or remaining <= 0 or self.stopping.is_set():
                break
            self.heard.clear()
            try:
                await asyncio.wait_for(self.heard.wait(), remaining)
            except TimeoutError:
                break
        late = [p for p in self.links.neighbours if self.links.heard[p] < t]
        for p in self.links.neighbours:
            self.links.silent[p] = self.links.silent[p] + 1 if p in late else 0

    def _accuracy(self) -> float | None:
        return self.parts.accuracy()

    async def run(self) -> dict[str, Any]:
        """Run to ``rounds`` (resuming from the checkpoint), then linger to serve the
        neighbours' last frames; SIGTERM/SIGINT stop cleanly after a checkpoint."""
        checkpoint.private_dir(self.config.site.state_dir)
        resumed = self.restore()
        self._reconcile_ledger(resumed)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Signal handlers exist only in the main thread; tests run nodes elsewhere.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if self.telemetry is not None:
            self.telemetry.start()
        await self.transport.start()
        self.transport.set_peers({p: self.config.consortium.peers[p] for p in self.peer_set})
        self.emit(
            "start",
            peer_id=self.identity.peer_id,
            listen=self.transport.listen_addr,
            resumed=resumed,
            round=self.round,
            neighbours=len(self.links.neighbours),
            gamma=self.gamma,
        )
        receiver = self.supervise(asyncio.create_task(self._receive_loop()))
        try:
            await self.exchange.join()
            while self.round < self.config.train.rounds and not self.stopping.is_set():
                await self._round()
            await self._linger()
        finally:
            receiver.cancel()
            await self.exchange.aclose()
            await self.transport.aclose()
        if self._crash is not None:
            detail = f"{type(self._crash).__name__}: {self._crash}"
            self.emit("crashed", round=self.round, detail=detail)
            raise NodeCrashedError(
                f"node stopped at round {self.round}: an internal task failed ({detail}); "
                "its last checkpoint is intact and a restart resumes from it"
            ) from self._crash
        result = {"round": self.round, "accuracy": self._accuracy(), "bytes_sent": self.bytes_sent}
        if self.dp is not None:
            result.update(eps_spent=self.eps_spent, dp_budget_spent=self.dp.spent[0])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.emit("finish", **result, rss_bytes=rss, rejected=self.rejections())
        if self.telemetry is not None:
            await self.telemetry.aclose()
            if self.telemetry.dropped:
                self.emit(
                    "telemetry_dropped",
                    dropped=self.telemetry.dropped,
                    published=self.telemetry.published,
                    detail=self.telemetry.last_error,
                )
        return result

    async def _round(self) -> None:
        t = self.round
        began = time.perf_counter()
        loss: float | None = None
        if self.phase == "mixed" and self._reload_requested:
            self._reload_config()
        if self.phase == "mixed":
            self._training = True
            try:
                loss, q = await asyncio.to_thread(self._train_and_compress, t)
            finally:
                self._training = False
            self._contribute(t, q)
            self.phase = "pushed"
            self.save()
        await self.exchange.send(t)
        await self._wait_for_round(t)
        included = await self.exchange.resolve(t)
        missed = [p for p in self.links.neighbours if p not in included]
        with torch.no_grad():
            self._guard_step(t)
            mix_step(self.state, self.gamma)
            if self.tracker:
                self.tracker.sync(self.trainer)
        self.round = self._next_round(t)
        self.phase = "mixed"
        self.guard.advance(self.round)
        self.save()
        due = (t + 1) % self.config.train.eval_every == 0 or self.round >= self.config.train.rounds
        if self.dp is not None and self.dp.spent[0] and not self._budget_reported:
            self._budget_reported = True
            self.emit("dp_budget_spent", round=t + 1, eps_spent=self.eps_spent)
        self.emit(
            "round",
            round=t + 1,
            loss=self._public_loss(loss),
            trained=loss is not None and not math.isnan(loss),
            accuracy=self._accuracy() if due else None,
            latency_s=round(time.perf_counter() - began, 4),
            peers=len(self.links.neighbours) - len(missed),
            missed=len(missed),
            bytes_sent=self.bytes_sent,
            eps_spent=self.eps_spent,
            rejected=self.rejections(),
        )
        self._rejections_logged.clear()
        if self._rejections_quiet:
            self.emit("rejected_unlogged", round=t + 1, counts=dict(self._rejections_quiet))
            self._rejections_quiet.clear()
        self._status(t + 1, self._public_loss(loss), len(self.links.neighbours) - len(missed))

    def _guard_step(self, t: int) -> None:
        """Feed this round's residuals to the step guard; log a back-off."""
        if self.guard_step is None:
            return
        state = self.state
        residual = StepGuard.residuals(state.x, state.xhat, state.s)
        before = self.gamma
        backed = bool(self.guard_step.observe(residual, t)[0])
        heard = self.exchange.heard_steps(self.guard_step.stamp)
        self.guard_step.agree(torch.tensor([min(heard, default=math.inf)], dtype=torch.float64))
        self.gamma = float(self.guard_step.gamma[0])
        if backed:
            self.emit(
                "step_backoff",
                round=t + 1,
                gamma_from=before,
                gamma_to=self.gamma,
                residual=float(residual[0]),
            )
        elif self.gamma != before:  # learned contraction, or a neighbour's step
            self.emit("step", round=t + 1, gamma_from=before, gamma_to=self.gamma)

    def _public_loss(self, loss: float | None) -> float | None:
        """The training loss is a statistic of private batches outside the DP guarantee
        (a loss per round per site can reveal records), so a DP site logs and publishes
        none; a site without DP has made no promise about its records and shows it."""
        return loss if self.dp is None else None

    def _status(self, t: int, loss: float | None, peers: int) -> None:
        """One human-readable line per round for whoever watches the site's terminal."""
        loss_text = "  -   " if loss is None else f"{loss:.4f}"
        line = (
            f"murmur {self.identity.peer_id[-8:]}  round {t}/{self.config.train.rounds}  "
            f"loss {loss_text}  peers {peers}/{len(self.links.neighbours)}  "
            f"sent {self.bytes_sent / 1e6:.2f} MB  {self._eps_text()}"
        )
        self.status_stream.write(line + "\n")
        self.status_stream.flush()

    @property
    def eps_spent(self) -> float:
        """ε this site has spent, read off its accountant (which the checkpoint restores).
        Once the budget is spent no gradient touches the records again; gossip of the
        already-private model (mixing, relaying, aggregating) is post-processing."""
        return 0.0 if self.dp is None else self.dp.epsilon()

    def _eps_text(self) -> str:
        if self.config.privacy is None:
            return "eps off"
        spent = "  budget spent" if self.dp is not None and self.dp.spent[0] else ""
        return f"eps {self.eps_spent:.2f}/{self.config.privacy.epsilon:g}{spent}"

    async def _linger(self) -> None:
        """Keep answering for a while so neighbours still finishing get our last frames."""
        loop = asyncio.get_running_loop()
        end = loop.time() + 2 * self.config.gossip.deadline_s
        last = clock = self.config.train.rounds - 1
        while loop.time() < end and not self.stopping.is_set():
            clock += 1
            unresolved = await self.exchange.linger(last, clock)
            behind = [p for p in self.links.neighbours if self.links.heard[p] < last]
            if not behind and not unresolved:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)


def main(config: NodeConfig) -> int:
    torch.set_num_threads(1)
    asyncio.run(Node(config).run())
    return 0

"""One site's node: asyncio round loop, training in a worker thread, backlog, checkpoints.

A round: train (worker thread) → q = C(x − x̂), x̂ += q, push W_ji q onto every out-link
→ **checkpoint** → send each neighbour its link's unacknowledged backlog → wait for the
neighbours' frames of this round until the deadline → x += γ(s − x̂) → **checkpoint**.

The first checkpoint is a write-ahead record: once q is in x̂ and in the backlog on disk,
a node killed while sending resends exactly that q after restart, never a different one,
so every neighbour's s stays consistent with our x̂. Acknowledgements sent to a
neighbour are the counts applied *as of the last checkpoint*, so a neighbour only forgets
items we have durably applied. Neighbours that missed three rounds in a row are no longer
waited for (they still get our frames) until they are heard from again.
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

from crypto.cipher import cipher_by_name
from crypto.errors import KeyFileError
from crypto.identity import SiteIdentity, load_key
from crypto.keyfile import read_secret
from node.config import NodeConfig, load_config
from node.errors import (
    ConfigError,
    FrameError,
    FutureFrameError,
    NodeCrashedError,
    StaleFrameError,
    TransportError,
)
from node.exchange.secure import SecureExchange
from node.gossip.choco import ChocoState, add_self_contribution, mix_step
from node.gossip.compress import parse_compressor, require_shared_slots, shared_indices, stacked
from node.gossip.sparse import Sparse
from node.gossip.step_size import StepGuard, guarded_compress, step_guard
from node.gossip.tracking import GradientTracker
from node.key_admin import CHECKPOINT_FILE, encryption_key_path, require_key
from node.state import checkpoint
from node.state.backlog import Item
from node.state.links import Links
from node.state.membership import Membership
from node.state.privacy_ledger import PrivacyLedger
from node.state.site_secrets import dp_seed
from node.training.data import load_site_data
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, LocalTrainer, StackedData
from node.transport.base import Transport
from node.transport.faulty import FaultyTransport
from node.transport.send_slots import SendSlots
from node.wire.frames import PREFIX_BYTES, Frame, FrameGuard, seal
from node.wire.sealed import SECURE_TOPICS
from node.wire.update import (
    INCARNATION_BYTES,
    MAX_INCARNATIONS,
    MAX_SHARED_ITEMS,
    NO_INCARNATION,
    decode_update,
    encode_update,
    encoded_item_size,
    link_item_values,
)

if TYPE_CHECKING:
    from node.telemetry import MqttTelemetry
    from node.training.dp_engine import DpTrainer

SUSPECT_AFTER = 3
# The most rounds one catch-up may skip (see Node._next_round).
CATCH_UP_MAX = 16
# Incarnations a neighbour may go through in one run of ours (see Node._apply).


class Node:
    """A long-lived site process; see the module docstring for the round protocol."""

    def __init__(
        self,
        config: NodeConfig,
        transport: Transport | None = None,
        log: TextIO | None = None,
        status: TextIO | None = None,
    ) -> None:
        self.config = config
        self.log_stream = log or sys.stdout
        self.status_stream = status or sys.stderr
        self.identity: SiteIdentity = load_key(config.site.key)
        me = self.identity.peer_id
        membership = Membership.of(config)
        weight = membership.weights(me)
        self._check_addresses(config, weight, me)
        self.index = config.consortium.members.index(me)
        data = load_site_data(config.data.source, config.data.target)
        self.eval = (
            load_site_data(config.data.eval_source, config.data.target)
            if config.data.eval_source
            else None
        )
        torch.manual_seed(config.consortium.seed)
        self.model = build_model(config.train.model, data.x.shape[1], data.n_classes)
        self.layout = FlatLayout.of(self.model)
        x0 = self.layout.to_vector(self.model).detach()
        plain = BatchedTrainer(
            self.model,
            x0.unsqueeze(0).clone(),
            StackedData.from_parts([(data.x, data.y)], torch.device("cpu")),
            config.train.trainer,
            seed=config.consortium.seed * 7919 + self.index,
        )
        self.trainer: LocalTrainer = plain
        self.dp: DpTrainer | None = None
        if config.privacy is not None:
            from node.training.dp_engine import DpTrainer  # Opacus loads only for sites that use DP

            # The noise and sampling seed is a secret from the OS CSPRNG (node.state.site_secrets),
            # never the consortium's public seed: that would let any member subtract it.
            self.dp = DpTrainer(
                plain,
                [(data.x, data.y)],
                config.privacy,
                config.train.rounds,
                dp_seed(config.site.state_dir),
            )
            self.trainer = self.dp
        self.ledger = PrivacyLedger(config.site.state_dir) if config.privacy is not None else None
        # murmur-gt gossips the stacked [x | v] (node.gossip.tracking): twice the model's length.
        self.tracker = (
            GradientTracker(self.trainer.params, x0)
            if config.gossip.method == "murmur-gt"
            else None
        )
        self.state = (
            self.tracker.state if self.tracker else ChocoState.start(self.trainer.params, x0)
        )
        self.dim = self.state.x.shape[1]
        parts = 2 if self.tracker else 1
        parsed = parse_compressor(
            config.gossip.compressor, config.consortium.seed, [data.label_counts]
        )
        self.compressor = stacked(parsed, parts)
        self._shared_indices = shared_indices(self.compressor, self.dim)
        # γ from the public graph, the compressor and the dimension, and a guard that
        # halves it if this site's residuals grow (node.gossip.step_size); a configured γ is kept.
        self.guard_step: StepGuard | None = None
        # Each neighbour's last announced (stamp, γ), and what each link last carried.
        self.neighbour_step: dict[str, tuple[int, float]] = {}
        self._announced: dict[str, tuple[int, float]] = {}
        if config.gossip.gamma is None:
            self.guard_step = step_guard(self.compressor, self.dim, membership.matrix(), 1)
            self.gamma = float(self.guard_step.gamma[0])
        else:
            self.gamma = config.gossip.gamma
        self.links = Links(me, membership, self.state.xhat[0], weight)
        # x̂₀ (every site's, from the shared seed) and this life's incarnation id: a
        # checkpoint restores the id, a start from nothing draws a new one (node.state.links).
        self.xhat0 = self.state.xhat[0].clone()
        self.incarnation = secrets.token_bytes(INCARNATION_BYTES)
        self._retired: dict[str, list[bytes]] = {}  # neighbours' earlier incarnations
        # Links owed a dense copy of x̂ (a neighbour restarted from nothing); sent only
        # when no training thread is writing x̂ (see _push).
        self._resend_due: set[str] = set()
        self._training = False
        self.claimed: dict[str, int] = {}  # rounds named by neighbours' too-far frames
        self.peer_set = set(self.links.neighbours)
        self.guard = FrameGuard(config.consortium.members)
        self.round = 0
        self.phase = "mixed"
        self.bytes_sent = 0
        self._budget_reported = False
        self.rejected: Counter[str] = Counter()
        self._rejections_logged: set[tuple[str | None, str]] = set()
        self._rejections_quiet: Counter[str] = Counter()  # counted, not logged, this round
        self._heard_event = asyncio.Event()
        self.last_frame: dict[str, float] = {}  # event-loop time of each peer's last frame
        self._stop = asyncio.Event()
        self._crash: BaseException | None = None  # a supervised task's failure
        # Our update frame to each neighbour; a round waits for one at most a deadline.
        self.sends = SendSlots(config.gossip.deadline_s, self._supervise)
        self._reload: NodeConfig | None = None
        self._reload_requested = False
        self.ckpt_path = config.site.state_dir / CHECKPOINT_FILE
        self.telemetry = self._telemetry(config, me)
        inner = transport or self._libp2p()
        self.transport: Transport = (
            FaultyTransport(
                inner,
                config.faults,
                config.consortium.members,
                config.consortium.seed * 31 + self.index,
            )
            if config.faults.drop or config.faults.delay_ms or config.faults.partitions
            else inner
        )
        self.secure: SecureExchange | None = None
        if config.gossip.secure != "off":
            self.secure = self._secure_exchange(membership)
            self.peer_set = self.secure.two_hop()
            self._check_addresses(config, self.peer_set, me)

    def _secure_exchange(self, membership: Membership) -> SecureExchange:
        """This site's encryption key (created on first start, 0600) and protocol state."""
        require_shared_slots(self.compressor, self.config.gossip.secure)
        cipher = cipher_by_name(self.config.gossip.secure)
        path = encryption_key_path(self.config)
        require_key(self.config)  # a lost key is never silently regenerated
        if path.exists():
            secret = cipher.load(path)
        else:
            checkpoint.private_dir(self.config.site.state_dir)
            secret = cipher.generate()
            cipher.save(secret, path)
        indices = self._shared_indices
        assert indices is not None  # a shared-index compressor, checked above

        exchange = SecureExchange(
            self.identity,
            cipher,
            secret,
            membership,
            self.config.consortium.seed,
            self.config.gossip.deadline_s,
            indices,
            self.state.xhat[0],
            self._send_body,
            self.emit,
            self.incarnation,
        )
        exchange.reachable = set(self.config.consortium.peers)
        exchange.on_reject = self._count_rejection
        exchange.arrived = self._heard_event.set
        exchange.supervise = self._supervise
        return exchange

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

    async def _send_body(self, peer: str, body: bytes) -> None:
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
        if self.secure is not None and membership != self.links.membership:
            raise ConfigError(
                "membership changes under secure aggregation are not supported yet: "
                "stop the consortium, edit every config, and restart"
            )
        if me not in membership.members:
            self.emit("removed", detail="this site is no longer in [consortium] members")
            self._stop.set()
            return
        weight = membership.weights(me)
        self._check_addresses(config, weight, me)
        change = self.links.rewire(membership, weight, self.state.xhat[0], self.state.s[0])
        if self.guard_step is not None:
            # A new graph has another spectrum and diameter: the step is derived afresh.
            self.guard_step.rewire(membership.matrix())
            self.gamma = float(self.guard_step.gamma[0])
            self.neighbour_step = {}
        self.config = replace(self.config, consortium=config.consortium)
        self.guard.set_allowlist(config.consortium.members)
        self.transport.set_peers({p: config.consortium.peers[p] for p in self.links.neighbours})
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

    # -- checkpoints ------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "phase": self.phase,
            "incarnation": self.incarnation,
            "x": self.state.x,
            "xhat": self.state.xhat,
            "s": self.state.s,
            "links": self.links.snapshot(),
            "bytes_sent": self.bytes_sent,
            "eps_spent": self.eps_spent,
            "trainer": self.trainer.state_dict(),
            "tracker": None if self.tracker is None else self.tracker.previous.clone(),
            "secure": None if self.secure is None else self.secure.snapshot(),
            "step": None
            if self.guard_step is None
            else {
                "guard": self.guard_step.state_dict(),
                "heard": dict(self.neighbour_step),
                "announced": dict(self._announced),
            },
        }

    def save(self) -> None:
        checkpoint.save(self.ckpt_path, self._snapshot())

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
        if self.secure is not None and saved.get("secure") is not None:
            self.secure.restore(saved["secure"])
            self.secure.inc = self.incarnation
        if self.guard_step is not None and saved.get("step") is not None:
            self.guard_step.load_state_dict(saved["step"]["guard"])
            self.neighbour_step = {
                p: (int(g), float(v)) for p, (g, v) in saved["step"]["heard"].items()
            }
            self._announced = {
                p: (int(g), float(v)) for p, (g, v) in saved["step"]["announced"].items()
            }
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
                    self._heard_event.set()
                continue
            except FrameError as exc:  # counted by the guard
                self._note_rejection(exc, received.peer)
                continue
            try:
                self._apply(frame)
            except FrameError as exc:
                self._count_rejection(exc, received.peer)
                continue
            self._heard_event.set()

    def _apply(self, frame: Frame) -> None:
        """Use one admitted frame; a :class:`FrameError` leaves this node's state untouched."""
        if self.secure is not None:
            if frame.topic not in SECURE_TOPICS:
                # Under secure aggregation no neighbour's update arrives in the clear: a
                # plaintext update would go straight into s, outside the protocol.
                raise FrameError(f"{frame.topic!r} frame from {frame.sender} in secure mode")
            self.last_frame[frame.sender] = asyncio.get_running_loop().time()
            self.secure.handle(frame)
            if frame.topic == "receipt" and frame.sender in self.links.heard:
                heard = self.links.heard
                heard[frame.sender] = max(heard[frame.sender], frame.round)
            return
        if frame.topic != "update" or frame.sender not in self.links.inbound:
            raise FrameError(f"unexpected {frame.topic!r} frame from {frame.sender}")
        update = decode_update(frame.payload, self.dim, self._shared_indices, frame.round)
        known = self.links.incarnation.get(frame.sender)
        retired = self._retired.setdefault(frame.sender, [])
        if update.inc in retired:
            raise StaleFrameError(f"frame from a previous life of {frame.sender}")
        if known is not None and known != update.inc:
            if len(retired) >= MAX_INCARNATIONS:
                # A real site restarts from nothing rarely; one that changes its id every
                # frame would buy a dense copy of our x̂ each time.
                raise StaleFrameError(f"{frame.sender} changed its incarnation too often")
            retired.append(known)
            self.links.reincarnate(frame.sender, self.xhat0, self.state.s[0])
            self._resend_due.add(frame.sender)
            if not self._training:
                self._resend_pending()
            for table in (self.neighbour_step, self._announced):
                table.pop(frame.sender, None)  # a fresh site has heard no step from us
            self.emit(
                "incarnation",
                peer=frame.sender,
                round=frame.round,
                detail="neighbour restarted without its checkpoint; link reset",
            )
        if update.step is not None:
            # The newest stamp wins, and within it the smallest step (a late, reordered
            # frame does not undo a newer announcement).
            old = self.neighbour_step.get(frame.sender)
            if old is None or (update.step[0], -update.step[1]) > (old[0], -old[1]):
                self.neighbour_step[frame.sender] = update.step
        self.links.incarnation[frame.sender] = update.inc
        self.links.inbound[frame.sender].accept(update.items, self.state.s[0])
        if update.echo == self.incarnation:  # an ack for our previous life means nothing
            self.links.out[frame.sender].ack(update.ack)
        self.links.heard[frame.sender] = max(self.links.heard[frame.sender], frame.round)

    def _train_and_compress(self, t: int) -> tuple[float, Sparse]:
        """Runs in a worker thread: local training, then CHOCO step 1 (q, and x̂ += q).
        It writes x and x̂ only; s, which the event loop adds neighbours' items into, is
        touched only on the event loop (:meth:`_push`)."""
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

    def _push(self, q: Sparse) -> None:
        """CHOCO step 2 on the event loop: s += W_ii q, and W_ji q onto every out-link."""
        with torch.no_grad():
            add_self_contribution(
                self.state, q, torch.tensor([self.links.weight[self.identity.peer_id]])
            )
            if self.secure is not None:
                return  # contributions are taken from x̂ by the secure exchange
            row = q.row(0)
            idx = None if row.indices is None else row.indices.reshape(-1).clone()
            for peer in self.links.neighbours:
                if peer in self._resend_due:
                    continue  # its dense copy of x̂, which holds q already, goes instead
                values, quantum = link_item_values(row, self.links.weight[peer])
                self.links.out[peer].push(idx, values.clone(), row.shared_round, quantum)
            self._resend_pending()

    def _resend_pending(self) -> None:
        """Send the dense copies of x̂ owed since neighbours restarted from nothing."""
        for peer in sorted(self._resend_due):
            if peer in self.links.out:
                self.links.resend_all(peer, self.state.xhat[0])
        self._resend_due.clear()

    async def _send_all(self, t: int, clock: int | None = None) -> None:
        """Send each neighbour this round's frame: new backlog items (the whole backlog
        when its oldest item went unacknowledged, :mod:`node.state.backlog`) and our ack.
        ``clock`` is the round the backlog's resend rule counts from (default ``t``)."""
        budget = self.config.gossip.max_frame_bytes // 2

        async def one(peer: str) -> bool:
            link = self.links.out[peer]
            items: list[Item] = []
            size = 0
            shared = 0
            for item in link.frame(t if clock is None else clock):
                item_bytes = encoded_item_size(item)
                shared += item.shared_round is not None
                if items and (size + item_bytes > budget or shared > MAX_SHARED_ITEMS):
                    break  # the rest goes next round: the receiver applies in order
                items.append(item)
                size += item_bytes
            step = None
            if self.guard_step is not None:
                stamp, agreed = self.guard_step.announcement()
                mine = (stamp, float(agreed[0]))
                if self._announced.get(peer) != mine:
                    step = mine  # min-gossip of the consensus step (node.gossip.step_size)
            inc = (self.incarnation, self.links.incarnation.get(peer, NO_INCARNATION))
            payload = encode_update(self.dim, self.links.acked[peer], items, step, inc)
            body = seal(self.identity, t, "update", payload)
            try:
                await self.transport.send(peer, body)
            except TransportError as exc:
                self.emit("send_failed", peer=peer, round=t, detail=str(exc))
                return False
            self.bytes_sent += PREFIX_BYTES + len(body)
            link.mark_sent(items, t if clock is None else clock)
            if step is not None:
                self._announced[peer] = step
            return True

        # A slow reader's send goes on past the deadline without holding the round; until
        # it ends that neighbour gets no new frame, and its items wait in the backlog.
        await asyncio.gather(*(self.sends.run(p, one(p)) for p in self.links.neighbours))

    async def _join(self, secure: SecureExchange) -> None:
        """Secure mode: before the first round, exchange encryption keys both ways with every
        neighbour, and wait until each neighbour has done the same with its own. A round
        started earlier yields no sum anyone can open and costs a full deadline; worse,
        sites that start apart stay out of step. Receipts go out when our readiness
        changes or every second, no faster. Gives up after SUSPECT_AFTER deadlines, as for
        a silent neighbour."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = began + SUSPECT_AFTER * self.config.gossip.deadline_s
        secure.round = self.round
        sent_at, sent_ready = -1.0, False
        while not self._stop.is_set() and loop.time() < end:
            target = self._catch_up_target(self.round)
            if target > self.round:
                # Restarted behind neighbours that kept going: their frames are beyond the
                # guard's lead until this site is in their round, so it moves there first
                # (a round it had pushed stays owed in the outboxes, as for a missed one).
                self.round = target
                self.guard.advance(self.round)
                secure.round = self.round
            unkeyed, unready = secure.unkeyed(), secure.unready()
            if not unkeyed and not unready:
                break
            if loop.time() - sent_at >= 1.0 or sent_ready != (not unkeyed):
                await secure.handshake(unkeyed)
                sent_at, sent_ready = loop.time(), not unkeyed
            self._heard_event.clear()
            wait = min(1.0 - (loop.time() - sent_at), end - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard_event.wait(), max(wait, 0.0))
        secure.started = True
        self.emit(
            "joined",
            waited_s=round(loop.time() - began, 3),
            unkeyed=secure.unkeyed(),
            unready=secure.unready(),
        )
        for p in self.links.neighbours:  # one never heard from has been silent since we began
            self.last_frame.setdefault(p, began)

    def _supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Own a background task's failure: an unexpected exception stops the node at the
        next round boundary (checkpointed, nothing half-applied) with a clear error,
        instead of leaving it running but deaf."""

        def done(finished: asyncio.Task[None]) -> None:
            if finished.cancelled() or finished.exception() is None:
                return
            if self._crash is None:
                self._crash = finished.exception()
            self._stop.set()
            self._heard_event.set()

        task.add_done_callback(done)
        return task

    def _next_round(self, t: int) -> int:
        """The round after t: t + 1, or further when every live neighbour is ahead (this
        node restarted, or fell behind). It catches up to its *slowest* live neighbour,
        so one member naming a far-future round (it chooses the number it signs) cannot
        move this node, or through it the rest. A jump resting on one neighbour's word
        alone (the only live one) is at most CATCH_UP_MAX rounds; with two or more, each
        signed by its own site, it goes all the way at once (a restarted site must catch
        neighbours that kept going)."""
        return max(t + 1, self._catch_up_target(t))

    def _catch_up_target(self, t: int) -> int:
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

    def _suspected(self) -> set[str]:
        """Neighbours taken to be down. In plaintext mode: SUSPECT_AFTER rounds in a row
        without their frame. Under secure aggregation a neighbour a round behind sends no
        part of ours either, yet must not be dropped from its contributors' sums, so there
        it is SUSPECT_AFTER deadlines with no frame at all (receipts come every round)."""
        if self.secure is None:
            return {p for p in self.links.neighbours if self.links.silent[p] >= SUSPECT_AFTER}
        now = asyncio.get_running_loop().time()
        limit = SUSPECT_AFTER * self.config.gossip.deadline_s
        return {p for p in self.links.neighbours if now - self.last_frame.get(p, now) > limit}

    def _out_of_range(self, peer: str, t: int) -> bool:
        """Whether ``peer`` is beyond our lead by its own signed claim and has sent no
        admissible frame lately: its frames for our round will not come (we restarted
        and are catching up), so it is not waited for. A member that also claims a far
        round while gossiping normally is still waited for."""
        far = self.claimed.get(peer, -1) > t + self.guard.lead
        return far and self.links.heard[peer] < max(t - self.guard.window, 0)

    def _waiting_for(self, t: int) -> list[str]:
        """Neighbours not suspected to be down whose part of round t has not arrived: their
        frame in plaintext mode, their term in a forwarded sum under secure aggregation."""
        suspected = self._suspected()
        if self.secure is not None:
            live = [p for p in self.links.neighbours if p not in suspected]
            if len(live) < 2:
                # No sum of two contributors can come; keep pace with the neighbour that
                # is left, which still needs our contributions round by round.
                return [p for p in live if self.links.heard[p] < t]
            # A neighbour two rounds past t has long sent its part of t; what is not here
            # will not come (a restarted site catching up does not wait a deadline for it).
            gone = {p for p in live if self.links.heard[p] >= t + 2 or self._out_of_range(p, t)}
            covered = self.secure.covered(t)
            return [p for p in live if p not in covered | gone]
        behind = [
            p
            for p in self.links.neighbours
            if self.links.heard[p] < t and not self._out_of_range(p, t)
        ]
        if suspected.issuperset(self.links.neighbours):
            # Cut off from every neighbour (not yet started, or down): keep to one round per
            # deadline instead of racing to the last round alone, so that the site is near
            # the others' round when they appear and they catch up with it.
            return behind
        return [p for p in behind if p not in suspected]

    async def _wait_for_round(self, t: int) -> list[str]:
        """Wait for this round's part from every neighbour not suspected to be down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.gossip.deadline_s
        while True:
            waiting = self._waiting_for(t)
            remaining = deadline - loop.time()
            if not waiting or remaining <= 0 or self._stop.is_set():
                break
            self._heard_event.clear()
            try:
                await asyncio.wait_for(self._heard_event.wait(), remaining)
            except TimeoutError:
                break
        missed = [p for p in self.links.neighbours if self.links.heard[p] < t]
        for p in self.links.neighbours:
            self.links.silent[p] = self.links.silent[p] + 1 if p in missed else 0
        return missed

    def _accuracy(self) -> float | None:
        if self.eval is None:
            return None
        with torch.no_grad():
            probs = self.trainer.predict_proba(self.eval.x)[0]
        return float((probs.argmax(1) == self.eval.y).float().mean())

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
                loop.add_signal_handler(sig, self._stop.set)
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
        receiver = self._supervise(asyncio.create_task(self._receive_loop()))
        try:
            if self.secure is not None:
                await self._join(self.secure)
            while self.round < self.config.train.rounds and not self._stop.is_set():
                await self._round()
            await self._linger()
        finally:
            receiver.cancel()
            await self.sends.aclose()
            if self.secure is not None:
                await self.secure.aclose()
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
            self._push(q)
            if self.secure is not None:
                self.secure.absent = self._suspected()
                self.secure.contribute(t, self.state.xhat[0])
            self.phase = "pushed"
            self.save()
        if self.secure is None:
            await self._send_all(t)
            missed = await self._wait_for_round(t)
        else:
            await self.secure.send_round(t)
            await self._wait_for_round(t)
            # No torch.no_grad() across an await: grad mode is per thread, and another
            # node's coroutine (tests run several in one loop) would inherit or undo it.
            included = await self.secure.resolve(t, self.state.s[0], self.state.xhat[0])
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
        heard = [
            value
            for p, (stamp, value) in self.neighbour_step.items()
            if p in self.links.inbound and stamp == self.guard_step.stamp
        ]
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
        end = asyncio.get_running_loop().time() + 2 * self.config.gossip.deadline_s
        last = self.config.train.rounds - 1
        clock = last
        while asyncio.get_running_loop().time() < end and not self._stop.is_set():
            clock += 1
            if self.secure is not None:
                # Receipts close the neighbours' last rounds; our own close with theirs. We
                # stay until each live neighbour acknowledges our verdicts: a last receipt
                # lost on the way would leave its contributions open for good. Acks carry
                # only checkpointed state, so save first to let ours advance.
                self.save()
                await self.secure.send_receipts(last)
                unacked = set(self.secure.unacknowledged()) - self._suspected()
                pending = any(box.pending for box in self.secure.outbox.values())
                unresolved = pending or bool(unacked)
            else:
                unresolved = False
            behind = [p for p in self.links.neighbours if self.links.heard[p] < last]
            if not behind and not unresolved:
                return
            if self.secure is None:
                # A neighbour still behind waits for our frames; what it lost goes again
                # on the backlog's own schedule, one linger step counting as a round.
                await self._send_all(last, clock=clock)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)


def main(config: NodeConfig) -> int:
    torch.set_num_threads(1)
    asyncio.run(Node(config).run())
    return 0

"""The state one site's secure aggregation keeps, shared by its roles, and what they all use.

The roles are in the modules beside this one: :mod:`.contributor`, :mod:`.aggregator`,
:mod:`.receiver` and :mod:`.join` (keys, receipts and bases); :class:`SecureExchange` in
:mod:`node.exchange.secure` puts them together. The protocol is described there. Every
piece of state is created here, once, so which role reads or writes it is a matter of
the methods below and in the role modules, not of construction order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from crypto.cipher import Cipher, PublicKey, Sealed, SecretKey, open_envelope
from crypto.errors import CryptoError
from crypto.identity import SiteIdentity
from node.errors import FrameError, SealedRejectedError, TransportError
from node.exchange.outbox import Outbox
from node.exchange.plan import Contributors, pick_aggregator
from node.exchange.secure.validation_tail import SECURE_TAIL
from node.state.membership import Membership
from node.transport.send_slots import SendSlots
from node.wire.frames import seal
from node.wire.sealed import Receipt, basis
from node.wire.update import NO_INCARNATION, Validation

Send = Callable[[str, bytes], Awaitable[None]]
Emit = Callable[..., None]
Reject = Callable[[FrameError, str], None]
KEEP_ROUNDS = 64
# No coordinate of an honest neighbourhood sum comes near this: it is a sum of a few
# weighted differences of model parameters. A decrypted value that is not finite or is
# larger was forged (by an aggregator, or a contributor) and the whole sum is refused.
SUM_LIMIT = 1e4
# A peer a send failed to is passed over as an aggregator for this many rounds, then tried
# again (it may be back; the transport's own backoff keeps retries cheap meanwhile).
DOWN_ROUNDS = 3


@dataclass
class Aggregation:
    """Contributions for one receiver and round held by its aggregator."""

    opened: float  # event-loop time of the first contribution
    base: bytes  # the receiver's basis its parts were made against
    parts: dict[str, Sealed] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a part or receipt came
    complete: bool = False
    flushed: bool = False


class SecureSession:
    """One site's secure-aggregation state; the roles are mixins over it."""

    def __init__(
        self,
        identity: SiteIdentity,
        cipher: Cipher,
        secret: SecretKey,
        membership: Membership,
        seed: int,
        deadline_s: float,
        indices: Callable[[int], torch.Tensor],
        xhat: torch.Tensor,
        send: Send,
        emit: Emit,
        incarnation: bytes = NO_INCARNATION,
        reachable: set[str] | None = None,
    ) -> None:
        self.me = identity.peer_id
        self.identity, self.cipher, self.secret = identity, cipher, secret
        self.membership, self.seed, self.deadline_s = membership, seed, deadline_s
        # The round's slots: the compressor's, which leave the tail its room
        # (validation_tail.TailRoom).
        self.indices = indices
        self.send, self.emit = send, emit
        self.weight = membership.weights(self.me)
        self.neighbours = sorted(p for p in self.weight if p != self.me)
        self.keys: dict[str, PublicKey] = {}
        self.x0 = xhat.detach().clone()  # the shared x̂₀ every copy starts from
        self.outbox = {p: Outbox(self.x0.clone()) for p in self.neighbours}
        self.inc, self.epoch = incarnation, 0  # our basis (the runtime sets inc on restore)
        # Receipts announce the epoch of the last checkpoint, as they do its verdicts: a
        # crash before the save must not leave neighbours on an epoch we restore without.
        self.saved_epoch = 0
        self.rebase_due = False  # a neighbour started over: rebase s at the next resolve
        self.incs: dict[str, bytes] = {}  # each neighbour's incarnation id as we know it
        self.retired: dict[str, list[bytes]] = {}  # ids each neighbour had before
        self.bases: dict[str, bytes] = {}  # each neighbour's basis, from its receipts
        self.included: dict[str, list[int]] = {p: [] for p in self.neighbours}
        self.through = -1  # highest round this site has resolved as a receiver
        self.processed: dict[str, int] = dict.fromkeys(self.neighbours, -1)
        self.saved_processed = dict(self.processed)
        self.views: dict[str, Receipt] = {}  # each neighbour's last receipt to us
        self.seen: dict[str, tuple[int, float]] = {}  # neighbour → (round, time) of last receipt
        self.round = 0  # the round this site is in; set by the runtime
        self.started = False  # past the start-up key exchange (see unkeyed/unready)
        self.sums: dict[int, list[tuple[Contributors, NDArray[np.float64]]]] = {}  # decrypted
        self.buffers: dict[tuple[str, int], Aggregation] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.reachable: set[str] = set(reachable or ())  # peers with an address
        self.absent: set[str] = set()  # neighbours this site suspects are down; set likewise
        self.down: dict[str, int] = {}  # peer → round a send to it last failed
        self.on_reject: Reject = lambda exc, peer: None  # counts refusals; set likewise
        self.arrived: Callable[[], None] = lambda: None  # a checked sum is in; set likewise
        # The validation stop (.validation_tail): what our contributions and receipts say
        # of it (the runtime's learner sets it; None: the stop is off here), the first
        # round any site can stop in (set likewise), the summed tails of each resolved
        # round, and the round each neighbour's receipts first said it had stopped.
        self.announce: Callable[[], Validation | None] = lambda: None
        self.stopped_from: Callable[[], int | None] = lambda: None  # 0-based; set likewise
        self.earliest_stop = 0
        self.tails: dict[int, NDArray[np.float64]] = {}
        self.stopped_at: dict[str, int] = {}
        # Owns our background tasks' failures (the runtime stops the node on one).
        self.supervise: Callable[[asyncio.Task[None]], object] = lambda task: task
        self.checking: dict[int, set[asyncio.Task[None]]] = {}  # sums being decrypted
        # contributions being parsed, per (receiver, round)
        self.checking_parts: dict[tuple[str, int], set[asyncio.Task[None]]] = {}
        self._key_sent: dict[str, float] = {}  # event-loop time our key last went to a peer
        self._parts_taken: set[tuple[str, int, str]] = set()  # (receiver, round, sender)
        self._sums_from: set[tuple[str, int]] = set()  # (aggregator, round) sums taken
        self._bits: dict[int, int] = {}  # round → contributors of the sums taken for it
        self._zeros: dict[tuple[str, int], Sealed] = {}
        # One frame in flight per peer; each waits at most a deadline (node.transport.send_slots).
        self.sends = SendSlots(deadline_s, lambda task: self.supervise(task))

    # -- who talks to whom -------------------------------------------------------------------

    def neighbours_of(self, peer: str) -> list[str]:
        return sorted(p for p in self.membership.weights(peer) if p != peer)

    def two_hop(self) -> set[str]:
        """Everyone this site sends to or hears from: neighbours and their neighbours."""
        out = set(self.neighbours)
        for p in self.neighbours:
            out.update(self.neighbours_of(p))
        out.discard(self.me)
        return out

    def aggregator(self, receiver: str, round: int) -> str | None:
        """The first of ``receiver``'s neighbours, in the round's seeded order, that this
        site has no evidence of being down. Only our own evidence counts: neighbours we
        suspect (``absent``), peers without an address, and peers a send to failed in the
        last ``DOWN_ROUNDS`` rounds. The receiver's receipts list whom *it* thinks is
        absent, but following that list let a receiver pick its own aggregator (name the
        others absent), so it is not used here."""
        down = self.absent | {p for p, t in self.down.items() if round - t < DOWN_ROUNDS}
        down |= {p for p in self.neighbours_of(receiver) if p != self.me} - self.reachable
        down.discard(self.me)
        return pick_aggregator(receiver, self.neighbours_of(receiver), round, self.seed, down)

    def live_contributors(self, receiver: str) -> set[str]:
        """The receiver's neighbours it does not consider down (its receipts say which)."""
        return set(self.neighbours_of(receiver)) - set(self._absent_at(receiver))

    def _absent_at(self, receiver: str) -> list[str]:
        view = self.views.get(receiver)
        return [] if view is None else view.absent

    def knows_us(self, receiver: str) -> bool:
        """Whether ``receiver``'s receipts echo our current incarnation: it has seen this
        life and rebased for it, so a contribution made against a fresh copy fits its sum."""
        view = self.views.get(receiver)  # set only after its basis (see _receipt_in)
        return view is not None and view.echo == self.inc

    @property
    def base(self) -> bytes:
        return basis(self.inc, self.epoch)

    # -- what every role uses ------------------------------------------------------------------

    async def _send(
        self, peer: str, round: int, topic: str, payload: bytes, queue: bool = True
    ) -> bool | None:
        """Send one signed frame: True when it went, False (and a ``send_failed`` event)
        when it did not, None when it is still going after a deadline (a slow reader: it
        goes on in the background and we go on too) or, without ``queue``, when an
        earlier frame to that peer still is."""

        async def go() -> bool:
            try:
                await self.send(peer, seal(self.identity, round, topic, payload))
            except TransportError as exc:
                self.emit("send_failed", peer=peer, round=round, topic=topic, detail=str(exc))
                return False
            return True

        sent = await self.sends.run(peer, go(), queue=queue)
        if sent is None:
            self.emit("send_slow", peer=peer, round=round, topic=topic)
        elif sent:
            self.down.pop(peer, None)
        return sent

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.supervise(task)

    def stopped_by(self, stamp: int) -> bool:
        """Whether this site had stopped training by round ``stamp`` (0-based), which is
        what its receipt stamped with that round says. A receipt for a round can leave
        after the stop was decided at that round's end: saying so under its stamp would
        tell neighbours a round early, where a plaintext frame (and the simulator) tells
        them in the next round's."""
        first = self.stopped_from()
        return first is not None and first <= stamp

    def slot_count(self, round: int) -> int:
        """Values in each contribution and sum of ``round``: the model's, then the tail."""
        return len(self.indices(round)) + SECURE_TAIL

    def _open(self, data: bytes, key: PublicKey, round: int) -> Sealed:
        try:
            return open_envelope(data, self.cipher, key, self.slot_count(round))
        except CryptoError as exc:
            raise SealedRejectedError(str(exc)) from None

    def _take(self, receiver: str, round: int, sender: str, sealed: Sealed, base: bytes) -> None:
        """Hold one part for ``receiver``'s sum: the aggregator's (:mod:`.aggregator`)."""
        raise NotImplementedError

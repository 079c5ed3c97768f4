"""One site's side of secure neighbourhood aggregation (``[gossip] secure``).

In every round a site plays three parts at once:

- **contributor** to each neighbour r: takes ``(x̂ − c_{→r})[I_t]`` from its outbox
  (:mod:`node.exchange.outbox`), scales it by W_r,me, encrypts it under r's pinned public key and
  sends it to r's aggregator of the round (never r itself): the first neighbour of r, in
  the round's seeded order, that this site itself has no evidence of being down; r's
  own claims about who is absent never enter that choice, so r cannot pick it;
- **aggregator** for the neighbours whose seeded pick names it: adds the ciphertexts it
  receives for r (plus its own), and once every expected neighbour of r has contributed,
  or half a deadline after r said (in its receipt) that it is waiting for the round,
  forwards the sum with a signed contributor bitmap, but only if it holds at least two
  contributions;
- **receiver**: at its deadline decrypts the disjoint sums it received (each of ≥ 2
  contributors), adds them into s at I_t, and from then on tells each neighbour, in its
  receipts, which of its contributions were in them.

Nothing here touches a ciphertext's contents except the receiver's own decryption.
Receipts sent reflect only what the last checkpoint holds, so a crash never makes a
neighbour believe a contribution was applied when it was not.

**A site restarted from nothing** (a new incarnation id, its checkpoint lost) holds none of
the copies its neighbours' running sums were built from. Every receipt carries the sender's
*basis*, its incarnation id and a rebase epoch, and echoes the addressee's incarnation id.
A neighbour i that sees r's id change rebases its own sum at its next resolve,
``s_i = W_ii x̂_i + Σ_j W_ij x̂₀`` (every copy back at the shared x̂₀), and bumps its epoch;
each contributor that sees a receiver's basis change sets its copy for it back to x̂₀ and
drops what was pending, so the next contributions at each slot carry the whole difference
and the sums are exact again once every slot has come up, through sums only (no one
learns a single neighbour's model). Contributions and sums name the basis they were made
against; an aggregator adds only parts of the receiver's current basis, a receiver adds only
sums of its own, and a site contributes to a neighbour only once that neighbour's receipts
echo its current id. A neighbour may change its id at most ``MAX_INCARNATIONS`` times.

Everything a peer sends is checked on receipt, in a worker thread, before it is kept: an
aggregator parses every chunk of a contribution (so one bad part cannot spoil the sum it
joins), and a receiver decrypts a sum when it arrives and refuses it unless every value
is finite and within SUM_LIMIT. A refused input is counted (``on_reject``) and the node
goes on. Our key goes to a peer whose receipt names another key at most once a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from crypto.cipher import Cipher, PublicKey, Sealed, SecretKey, key_id_of, open_envelope
from crypto.errors import BadSignatureError, CryptoError
from crypto.identity import SiteIdentity, public_key_from_peer_id
from node.errors import (
    FrameError,
    KeyPinError,
    MalformedFrameError,
    ReplayedFrameError,
    SealedRejectedError,
    StaleFrameError,
    TransportError,
)
from node.exchange.outbox import Outbox
from node.exchange.plan import (
    Contributors,
    disjoint_sums,
    pick_aggregator,
    sign_contributors,
    verify_contributors,
)
from node.state.membership import Membership
from node.transport.send_slots import SendSlots
from node.wire.frames import Frame, seal
from node.wire.sealed import Receipt, basis, check_basis, decode_receipt, pack, unpack
from node.wire.update import INCARNATION_BYTES, MAX_INCARNATIONS, NO_INCARNATION

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


class SecureExchange:
    """Contributor, aggregator and receiver state of one site; see the module docstring."""

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
        self.indices, self.send, self.emit = indices, send, emit
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

    # -- contributor ---------------------------------------------------------------------------

    def live_contributors(self, receiver: str) -> set[str]:
        """The receiver's neighbours it does not consider down (its receipts say which)."""
        return set(self.neighbours_of(receiver)) - set(self._absent_at(receiver))

    def _absent_at(self, receiver: str) -> list[str]:
        view = self.views.get(receiver)
        return [] if view is None else view.absent

    def contribute(self, round: int, xhat: torch.Tensor) -> None:
        """Take this round's contributions into the outboxes (before the write-ahead save).
        None go to neighbours in ``absent``, to those whose key is not pinned yet, nor to a
        receiver with fewer than two live contributors: no sum for it could be opened, and
        what stays owed goes out once it can."""
        idx = self.indices(round)
        for r in self.neighbours:
            live = len(self.live_contributors(r)) >= 2
            if r not in self.absent and r in self.keys and live and self.knows_us(r):
                self.outbox[r].contribute(xhat, idx, round)

    def knows_us(self, receiver: str) -> bool:
        """Whether ``receiver``'s receipts echo our current incarnation: it has seen this
        life and rebased for it, so a contribution made against a fresh copy fits its sum."""
        view = self.views.get(receiver)  # set only after its basis (see _receipt_in)
        return view is not None and view.echo == self.inc

    @property
    def base(self) -> bytes:
        return basis(self.inc, self.epoch)

    async def send_round(self, round: int) -> None:
        """Encrypt and send this round's contributions, then a receipt to every neighbour:
        the receipt also tells each neighbour that this site now waits for the round."""
        self.round = round
        await self.send_contributions(round)
        # In the background: a receipt queued behind a slow reader's earlier frame must not
        # hold our round (the deadline is counted from now).
        self._spawn(self.send_receipts(round, waiting=True))

    async def send_contributions(self, round: int) -> None:
        """Each receiver's part, all at once (one slow aggregator delays only its own)."""
        await asyncio.gather(*(self._contribute_to(r, round) for r in self.neighbours))

    async def _contribute_to(self, r: str, round: int) -> None:
        entry = self.outbox[r].pending.get(round)
        base = self.bases.get(r)  # the outbox is replaced whenever this changes
        if entry is None or r not in self.keys or base is None:
            return
        values = (entry[1].double() * self.weight[r]).numpy()
        sealed = await asyncio.to_thread(self.cipher.encrypt, values, self.keys[r])
        body = pack({"to": r, "sealed": sealed.to_bytes(), "base": base})
        # A send that failed outright marks that aggregator down (for us) and the part
        # goes to the next one in the seeded order at once; every contributor whose send
        # fails does the same, so they meet at the same next aggregator. A send still
        # going after a deadline counts as sent: sent again elsewhere, it could land in
        # two sums, whose difference would open one contribution.
        while (agg := self.aggregator(r, round)) is not None:
            if self.outbox[r].pending.get(round) is not entry:
                return  # r's basis changed meanwhile: that part is void
            if agg == self.me:
                self._take(r, round, self.me, sealed, base)
                return
            if await self._send(agg, round, "contrib", body) is not False:
                return
            self.down[agg] = round

    async def send_receipts(self, round: int, waiting: bool = False) -> None:
        """A receipt to every neighbour, all at once: one slow reader delays only its own
        (each waits at most a deadline, queue included)."""
        await asyncio.gather(
            *(self._send(p, round, "receipt", self._receipt(p, waiting)) for p in self.neighbours)
        )

    def unkeyed(self) -> list[str]:
        """Neighbours not yet keyed both ways: we lack their key, or their last receipt did
        not name ours or did not echo this life's id. Until all hold, contributions to or
        from them cannot flow."""
        return [p for p in self.neighbours if self._lacks_keys(p) or not self.knows_us(p)]

    def _lacks_keys(self, peer: str) -> bool:
        """We lack ``peer``'s key, or its last receipt does not name ours."""
        view = self.views.get(peer)
        return peer not in self.keys or view is None or view.key_id != self.secret.public.key_id

    def unacknowledged(self) -> list[str]:
        """Neighbours whose last receipt does not yet acknowledge our verdicts (``through``)."""
        return [
            p for p in self.neighbours if p not in self.views or self.views[p].ack < self.through
        ]

    def unready(self) -> list[str]:
        """Neighbours whose last receipt said they still lack keys with one of theirs; a
        round started before they are ready would get none of their contributions."""
        return [p for p in self.neighbours if p not in self.views or not self.views[p].ready]

    async def handshake(self, unkeyed: list[str]) -> None:
        """Send our key to those of ``unkeyed`` that lack it, and a receipt (naming the key
        we hold for each, our basis, and whether we are ready) to every neighbour. A
        missing echo alone needs only the receipt: our key is ~262 KB under CKKS."""
        for p in unkeyed:
            if self._lacks_keys(p):
                await self.send_key(p, self.round)
        await self.send_receipts(self.round)

    def _receipt(self, peer: str, waiting: bool = False) -> bytes:
        pinned = self.keys.get(peer)
        return pack(
            {
                "included": self.included[peer],
                "through": self.through,
                "ack": self.saved_processed[peer],
                "key": None if pinned is None else pinned.key_id,
                "absent": sorted(self.absent),
                "ready": self.started or not self.unkeyed(),
                "waiting": waiting,
                "base": basis(self.inc, self.saved_epoch),
                "echo": self.incs.get(peer),
            }
        )

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

    async def send_key(self, peer: str, round: int) -> None:
        body = pack({"cipher": self.cipher.name, "key": self.secret.public.data})
        await self._send(peer, round, "key", body)

    # -- frames in -----------------------------------------------------------------------------

    def handle(self, frame: Frame) -> None:
        """Admit one secure-aggregation frame (already signature-checked) or raise FrameError."""
        sender, round = frame.sender, frame.round
        if frame.topic == "contrib":
            raw = unpack(frame.payload, "contrib", {"to": str, "sealed": bytes, "base": bytes})
            base = check_basis(raw["base"], "contrib")
            self._contribution(sender, round, raw["to"], raw["sealed"], base)
            return
        if sender not in self.outbox:
            raise MalformedFrameError(f"{frame.topic!r} frame from non-neighbour {sender}")
        if frame.topic == "key":
            raw = unpack(frame.payload, "key", {"cipher": str, "key": bytes})
            self._pin(sender, raw["cipher"], raw["key"])
            # Answer with a receipt so the sender learns we hold its key (see unkeyed).
            self._spawn(self._send(sender, self.round, "receipt", self._receipt(sender)))
        elif frame.topic == "sum":
            self._sum(sender, round, frame.payload)
        elif frame.topic == "receipt":
            self._receipt_in(sender, round, frame.payload)
        else:
            raise MalformedFrameError(f"unexpected {frame.topic!r} frame from {sender}")

    def _pin(self, peer: str, cipher: str, data: bytes) -> None:
        pinned = self.keys.get(peer)
        if pinned is not None:
            if pinned.key_id != key_id_of(data):
                raise KeyPinError(
                    f"{peer} presented an encryption key other than the one pinned for it; "
                    "refused (a site that rotated its key is accepted after `murmur keys "
                    "unpin --peer` here; see node.key_admin)"
                )
            return
        if cipher != self.cipher.name:
            raise SealedRejectedError(
                f"{peer} uses cipher {cipher!r}, this site {self.cipher.name!r}"
            )
        try:
            self.keys[peer] = self.cipher.public_key(data)
        except CryptoError as exc:
            raise SealedRejectedError(f"{peer}'s encryption key is unusable: {exc}") from None
        self.emit("key_pinned", peer=peer, key_id=key_id_of(data).hex())

    def _open(self, data: bytes, key: PublicKey, round: int) -> Sealed:
        try:
            return open_envelope(data, self.cipher, key, len(self.indices(round)))
        except CryptoError as exc:
            raise SealedRejectedError(str(exc)) from None

    def _contribution(
        self, sender: str, round: int, receiver: str, data: bytes, base: bytes
    ) -> None:
        if receiver not in self.keys:
            raise SealedRejectedError(f"contribution for {receiver}, whose key this site lacks")
        if sender == receiver or sender not in self.neighbours_of(receiver):
            raise SealedRejectedError(f"{sender} is not a neighbour of {receiver}")
        buffer = self.buffers.get((receiver, round))
        if buffer is not None and buffer.flushed:
            raise StaleFrameError(f"contribution for {receiver} round {round} after its sum left")
        expected = self.bases.get(receiver) if buffer is None else buffer.base
        if base != expected:
            # Made against a basis the receiver has left (or not reached): in one sum with
            # current parts it would spoil all of them.
            raise StaleFrameError(f"contribution for {receiver} against another basis")
        part = (receiver, round, sender)
        if part in self._parts_taken or (buffer is not None and sender in buffer.parts):
            # One part per contributor, receiver and round: more would only park memory
            # and parse work here (an honest contributor sends one).
            raise ReplayedFrameError(f"a second contribution from {sender} for {receiver}")
        sealed = self._open(data, self.keys[receiver], round)
        self._parts_taken.add(part)
        task = asyncio.get_running_loop().create_task(
            self._check_contribution(sender, round, receiver, sealed, base)
        )
        self.supervise(task)
        pending = self.checking_parts.setdefault((receiver, round), set())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def _check_contribution(
        self, sender: str, round: int, receiver: str, sealed: Sealed, base: bytes
    ) -> None:
        """Parse every chunk before the part joins a sum: one bad part must not spoil it."""
        key = self.keys[receiver]
        try:
            # Added to an encryption of zero under the same key, as it will be to the
            # other parts: a part that parses but cannot be added (another scale inside
            # SEAL's body) is refused here instead of spoiling the sum.
            zero = self._zero(receiver, sealed.count)
            await asyncio.to_thread(self.cipher.add, [zero, sealed], key)
        except CryptoError as exc:
            self.on_reject(SealedRejectedError(f"contribution from {sender}: {exc}"), sender)
            return
        buffer = self.buffers.get((receiver, round))
        if buffer is not None and buffer.flushed:
            self.on_reject(StaleFrameError(f"contribution for {receiver} came late"), sender)
            return
        if buffer is not None and buffer.base != base:
            self.on_reject(StaleFrameError(f"contribution for {receiver}: old basis"), sender)
            return
        self._take(receiver, round, sender, sealed, base)

    def _zero(self, receiver: str, count: int) -> Sealed:
        """An encryption of ``count`` zeros under ``receiver``'s key, made once."""
        key = (receiver, count)
        if key not in self._zeros:
            self._zeros[key] = self.cipher.encrypt(np.zeros(count), self.keys[receiver])
        return self._zeros[key]

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.supervise(task)

    def _take(self, receiver: str, round: int, sender: str, sealed: Sealed, base: bytes) -> None:
        key = (receiver, round)
        if key not in self.buffers:
            self.buffers[key] = Aggregation(asyncio.get_running_loop().time(), base)
            self._spawn(self._aggregate(receiver, round))
        buffer = self.buffers[key]
        if buffer.base != base:
            return  # our own part, made against a basis the others' parts have left
        buffer.parts.setdefault(sender, sealed)
        buffer.complete = self.live_contributors(receiver) <= set(buffer.parts)
        buffer.changed.set()

    def _flush_at(self, receiver: str, round: int, buffer: Aggregation) -> float:
        """When to forward a sum still missing contributions. The receiver waits a deadline
        from its own start of the round, which its receipt of that round announces, so the
        sum leaves half a deadline after that (receipts sent while joining or lingering
        do not count: the site is not waiting then). A receiver not there yet is not waiting, so
        its late contributors get two deadlines (it keeps early sums); one already past the
        round gets what there is now. Anchoring on the first contribution instead lets
        sites one round apart miss every round: each sum leaves just before the lagging
        contributor arrives."""
        at_round, at_time = self.seen.get(receiver, (-1, 0.0))
        if at_round > round:
            return 0.0
        if at_round == round:
            return at_time + self.deadline_s / 2
        return buffer.opened + 2 * self.deadline_s

    async def _aggregate(self, receiver: str, round: int) -> None:
        buffer = self.buffers[(receiver, round)]
        loop = asyncio.get_running_loop()
        while not buffer.complete:
            remaining = self._flush_at(receiver, round, buffer) - loop.time()
            if remaining <= 0:
                break
            buffer.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(buffer.changed.wait(), remaining)
        checks = self.checking_parts.pop((receiver, round), set())
        if checks:  # parts that arrived in time and are still being parsed join this sum
            await asyncio.gather(*checks, return_exceptions=True)
        buffer.flushed = True
        parts = dict(buffer.parts)
        buffer.parts.clear()
        if self.processed.get(receiver, -1) >= round:
            self.emit("sum_dropped", receiver=receiver, round=round, contributors=len(parts))
            return  # the receiver has closed the round; a sum now would only be refused
        if len(parts) < 2:
            self.emit("sum_withheld", receiver=receiver, round=round, contributors=len(parts))
            return
        try:
            total = await asyncio.to_thread(
                self.cipher.add, list(parts.values()), self.keys[receiver]
            )
        except CryptoError as exc:  # every part was parsed on receipt; this is a backstop
            self.emit("sum_failed", receiver=receiver, round=round, detail=str(exc))
            return
        data = total.to_bytes()
        record = sign_contributors(
            self.identity, receiver, round, parts, self.neighbours_of(receiver), data, buffer.base
        )
        await self._send(receiver, round, "sum", pack(record.sum_fields(data)))

    def _sum(self, sender: str, round: int, payload: bytes) -> None:
        fields = {"bitmap": int, "digest": bytes, "sig": bytes, "base": bytes, "sealed": bytes}
        raw = unpack(payload, "sum", fields)
        if round <= self.through:
            raise StaleFrameError(f"sum for round {round}, already resolved")
        if check_basis(raw["base"], "sum") != self.base:
            raise StaleFrameError(f"sum for round {round} made against a basis we have left")
        record = Contributors(
            self.me, round, raw["bitmap"], raw["digest"], raw["sig"], base=raw["base"]
        )
        try:
            verify_contributors(record, public_key_from_peer_id(sender), raw["sealed"])
            if raw["bitmap"] < 0 or not record.decryptable(self.neighbours):
                raise SealedRejectedError("a sum of fewer than two contributors is never opened")
        except (BadSignatureError, ValueError) as exc:
            raise SealedRejectedError(f"contributor record from {sender}: {exc}") from None
        if (sender, round) in self._sums_from:
            raise ReplayedFrameError(f"a second sum from {sender} for round {round}")
        if record.bitmap & self._bits.get(round, 0):
            # Two sums sharing a contributor: decrypting both would let us subtract one from
            # the other, so the later one is never opened (disjoint_sums does the same for
            # what we add; this is about what we see).
            raise SealedRejectedError(f"sum for round {round} overlaps one already held")
        held = self.sums.setdefault(round, [])
        checking = self.checking.setdefault(round, set())
        if len(held) + len(checking) >= len(self.neighbours):
            raise SealedRejectedError(f"more sums for round {round} than this site has neighbours")
        sealed = self._open(raw["sealed"], self.secret.public, round)
        self._sums_from.add((sender, round))
        self._bits[round] = self._bits.get(round, 0) | record.bitmap
        task = asyncio.get_running_loop().create_task(self._check_sum(sender, record, sealed))
        self.supervise(task)
        checking.add(task)
        task.add_done_callback(checking.discard)

    async def _check_sum(self, sender: str, record: Contributors, sealed: Sealed) -> None:
        """Decrypt a sum as it arrives (off the event loop) and keep it only if every value
        is finite and within SUM_LIMIT; see the module docstring."""
        try:
            values = await asyncio.to_thread(self.cipher.decrypt, sealed, self.secret)
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (sealed.count,):
                raise SealedRejectedError(f"sum decrypts to {values.shape}, not {sealed.count}")
            if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > SUM_LIMIT:
                raise SealedRejectedError(
                    f"sum from {sender} decrypts to values that are not finite or exceed "
                    f"{SUM_LIMIT:g}: forged"
                )
        except (FrameError, CryptoError, ValueError, RuntimeError) as exc:
            # TenSEAL raises ValueError/RuntimeError on a ciphertext it cannot decrypt
            # (e.g. "scale out of bounds"): the sender's fault, never our node's.
            error = exc if isinstance(exc, FrameError) else SealedRejectedError(str(exc))
            self.on_reject(error, sender)
            # a refused sum holds no contributor: an honest one naming them may still come
            self._bits[record.round] = self._bits.get(record.round, 0) & ~record.bitmap
            return
        if record.round <= self.through or record.base != self.base:
            return  # resolved meanwhile without it, or we rebased meanwhile
        self.sums.setdefault(record.round, []).append((record, values))
        self.arrived()

    def _receipt_in(self, sender: str, round: int, payload: bytes) -> None:
        receipt = decode_receipt(payload)
        self._follow_basis(sender, round, receipt)
        outbox = self.outbox[sender]
        included = set(receipt.included)
        for t in sorted(outbox.pending):
            if t <= receipt.through:
                outbox.resolve(t, t in included)
        self.processed[sender] = max(self.processed[sender], receipt.through)
        self.included[sender] = [t for t in self.included[sender] if t > receipt.ack]
        self.views[sender] = receipt
        if receipt.waiting:
            self.seen[sender] = (round, asyncio.get_running_loop().time())
        for (receiver, _), buffer in self.buffers.items():
            if receiver == sender:
                buffer.changed.set()  # its flush time may have moved
        if receipt.key_id != self.secret.public.key_id:
            # Our key is ~262 KB under CKKS: a receipt naming another key id must not buy a
            # member that much of our upload each time; once a deadline is enough.
            now = asyncio.get_running_loop().time()
            if now - self._key_sent.get(sender, -math.inf) >= self.deadline_s:
                self._key_sent[sender] = now
                self._spawn(self.send_key(sender, self.round))

    def _follow_basis(self, sender: str, round: int, receipt: Receipt) -> None:
        """Before a receipt's verdicts: a new incarnation of ``sender`` means it lost the
        copies our sum was built from (we rebase); a new basis of ``sender`` means its sum
        no longer holds our copy (ours goes back to x̂₀). See the module docstring."""
        inc = receipt.base[:INCARNATION_BYTES]
        retired = self.retired.setdefault(sender, [])
        if inc in retired:
            raise StaleFrameError(f"receipt from a previous life of {sender}")
        known = self.incs.get(sender)
        if known is not None and known != inc:
            if len(retired) >= MAX_INCARNATIONS:
                raise StaleFrameError(f"{sender} changed its incarnation too often")
            retired.append(known)
            self.epoch += 1
            self.rebase_due = True
            self.sums.clear()  # made against our old basis
            self.processed[sender] = self.saved_processed[sender] = receipt.through
            self.included[sender] = []
            self.emit(
                "incarnation",
                peer=sender,
                round=round,
                detail="neighbour restarted without its checkpoint; sums rebased",
            )
        self.incs[sender] = inc
        old = self.bases.get(sender)
        if old is not None and old != receipt.base:
            if inc == old[:INCARNATION_BYTES] and receipt.base < old:
                raise StaleFrameError(f"receipt from {sender} names an earlier basis")
            self.outbox[sender] = Outbox(self.x0.clone())
        self.bases[sender] = receipt.base

    # -- receiver ------------------------------------------------------------------------------

    def covered(self, round: int) -> set[str]:
        members: set[str] = set()
        for record, _ in self.sums.get(round, []):
            members.update(record.members(self.neighbours))
        return members

    async def resolve(self, round: int, s: torch.Tensor, xhat: torch.Tensor) -> set[str]:
        """Close ``round``: decrypt its disjoint sums into s; returns who was included.
        Called when no training thread writes ``xhat`` (our x̂), which a rebase reads."""
        pending = self.checking.pop(round, set())
        if pending:  # sums that arrived in time and are still being checked
            await asyncio.gather(*pending, return_exceptions=True)
        if self.rebase_due:
            others = sum(self.weight[p] for p in self.neighbours)
            with torch.no_grad():
                s.copy_(self.weight[self.me] * xhat + others * self.x0.to(s.dtype))
            self.rebase_due = False
        held = self.sums.pop(round, [])
        chosen = disjoint_sums([record.bitmap for record, _ in held])
        idx = self.indices(round)
        included: set[str] = set()
        with torch.no_grad():
            for k in chosen:
                record, values = held[k]
                s.index_add_(0, idx, torch.from_numpy(values).to(s.dtype))
                included.update(record.members(self.neighbours))
        for peer in included:
            self.included[peer].append(round)
        self.through = max(self.through, round)
        for t in [t for t in self.sums if t <= self.through]:
            del self.sums[t]
        for t in [t for t in self.checking if t <= self.through]:
            del self.checking[t]
        for key in [k for k in self.buffers if k[1] < round - KEEP_ROUNDS]:
            del self.buffers[key]
        for key in [k for k in self.checking_parts if k[1] < round - KEEP_ROUNDS]:
            del self.checking_parts[key]
        self._parts_taken = {k for k in self._parts_taken if k[1] >= round - KEEP_ROUNDS}
        self._sums_from = {k for k in self._sums_from if k[1] > self.through}
        self._bits = {t: b for t, b in self._bits.items() if t > self.through}
        return included

    # -- checkpoint ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """State for the checkpoint (read-only; :meth:`commit` once it is on disk)."""
        return {
            "keys": {p: k.data for p, k in self.keys.items()},
            "outbox": {p: box.snapshot() for p, box in self.outbox.items()},
            "included": {p: list(v) for p, v in self.included.items()},
            "through": self.through,
            "processed": dict(self.processed),
            "inc": self.inc,
            "epoch": self.epoch,
            "rebase_due": self.rebase_due,
            "incs": dict(self.incs),
            "retired": {p: list(v) for p, v in self.retired.items()},
            "bases": dict(self.bases),
        }

    def commit(self, saved: dict[str, Any]) -> None:
        """``saved`` is on disk: receipts may now announce its verdicts and its epoch."""
        self.saved_processed = dict(saved["processed"])
        self.saved_epoch = int(saved["epoch"])

    def restore(self, saved: dict[str, Any]) -> None:
        self.keys = {p: self.cipher.public_key(data) for p, data in saved["keys"].items()}
        self.outbox = {p: Outbox.restore(raw) for p, raw in saved["outbox"].items()}
        self.included = {p: list(v) for p, v in saved["included"].items()}
        self.through = int(saved["through"])
        self.processed = {p: int(v) for p, v in saved["processed"].items()}
        self.saved_processed = dict(self.processed)
        self.inc = bytes(saved.get("inc", self.inc))
        self.epoch = self.saved_epoch = int(saved.get("epoch", 0))
        self.rebase_due = bool(saved.get("rebase_due", False))
        self.incs = {p: bytes(v) for p, v in saved.get("incs", {}).items()}
        self.retired = {p: [bytes(b) for b in v] for p, v in saved.get("retired", {}).items()}
        self.bases = {p: bytes(v) for p, v in saved.get("bases", {}).items()}

    async def aclose(self) -> None:
        await self.sends.aclose()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

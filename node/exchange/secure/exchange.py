"""One site's side of secure neighbourhood aggregation (``[gossip] secure``).

In every round a site plays three parts at once, each in its own module over the state
they share (:mod:`.session`): :mod:`.contributor`, :mod:`.aggregator`, :mod:`.receiver`;
keys, receipts and bases are :mod:`.join`.

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
from typing import Any

from crypto.errors import KeyMismatchError
from node.errors import ConfigError, MalformedFrameError
from node.exchange.outbox import Outbox
from node.exchange.secure.aggregator import Aggregator
from node.exchange.secure.contributor import Contributor
from node.exchange.secure.join import Join
from node.exchange.secure.receiver import Receiver
from node.wire.frames import Frame
from node.wire.sealed import check_basis, unpack

__all__ = ["SecureExchange"]


class SecureExchange(Contributor, Aggregator, Receiver, Join):
    """Contributor, aggregator and receiver of one site, over one :class:`SecureSession`."""

    async def send_round(self, round: int) -> None:
        """Encrypt and send this round's contributions, then a receipt to every neighbour:
        the receipt also tells each neighbour that this site now waits for the round."""
        self.round = round
        await self.send_contributions(round)
        # In the background: a receipt queued behind a slow reader's earlier frame must not
        # hold our round (the deadline is counted from now).
        self._spawn(self.send_receipts(round, waiting=True))

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
        self.keys = {}
        for peer, data in saved["keys"].items():
            try:
                self.keys[peer] = self.cipher.public_key(data)
            except KeyMismatchError as exc:  # e.g. pinned under an earlier Murmur's parameters
                raise ConfigError(
                    f"the checkpoint pins an encryption key for {peer} that this node cannot "
                    f"use ({exc}); once that site has a new key: murmur keys unpin --peer {peer}"
                ) from None
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

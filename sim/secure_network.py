"""Secure neighbourhood aggregation in the in-process simulator, with real ciphertexts.

Every simulated site has its own key pair and signing identity. Per round and receiver i:
each working neighbour j takes its contribution from its per-link outbox
(:mod:`node.exchange.outbox`), multiplies it by W_ij and encrypts it under i's public key; the
round's aggregator (:func:`node.exchange.plan.pick_aggregator`, skipping neighbours that are
down) adds what reached it and, when that is at least two contributions, forwards the sum
with its signed contributor bitmap; i verifies the record and decrypts the sum. The
bytes go through the same envelope checks as on a real site (``open_envelope``).

Faults use the same seeded model as the plaintext network: each contribution (j → a) and
each forward (a → i) is one frame that can be dropped or miss the deadline. Receipts are
delivered at once here; on a real site they are frames too and a lost one only delays a
correction. Bytes counted are the sealed envelopes and contributor records sent between
different sites, and the receipts, each as the node's whole frame (envelope, signature,
payload fields) sized by the codec; a node's extra receipts while it waits are not.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from crypto.cipher import Cipher, PublicKey, Sealed, SecretKey, open_envelope
from crypto.identity import PEER_ID_CHARS, SiteIdentity
from node.exchange.outbox import Outbox
from node.exchange.plan import pick_aggregator, sign_contributors, verify_contributors
from node.exchange.secure.validation_tail import SECURE_TAIL, tail_batch
from node.gossip.sparse import Sparse
from node.wire.frames import frame_size
from node.wire.sealed import basis, pack
from node.wire.update import INCARNATION_BYTES
from sim.exchange import Announced, BatchedExchange, Traffic, in_order
from sim.faults import FaultModel

# Simulated sites never start over, so every receiver keeps its first basis; its size is
# what counts here (it is in every contribution, sum and receipt a node sends).
BASE = basis(bytes(INCARNATION_BYTES), 0)


@dataclass
class _SecureRound:
    """What one round's ``contribute`` and ``send`` left for ``resolve``."""

    t: int
    xhat: torch.Tensor  # (N, D) float32 on the CPU, what the outboxes difference against
    indices: torch.Tensor  # the round's shared slots
    working: NDArray[np.bool_]
    tails: NDArray[np.float64]  # (N, SECURE_TAIL) each site's validation tail
    stopped: NDArray[np.bool_]  # (N,) what each site's receipts say of its stop
    included: NDArray[np.bool_] = field(init=False)
    sums: list[tuple[int, Sealed]] = field(default_factory=list)  # (receiver, its sum)

    def __post_init__(self) -> None:
        n = len(self.working)
        self.included = np.zeros((n, n), dtype=bool)


class SecureSimNetwork(BatchedExchange):
    """N sites exchanging encrypted contributions through per-receiver aggregators."""

    def __init__(
        self,
        weights: NDArray[np.float64],
        faults: FaultModel | None,
        cipher: Cipher,
        x0: torch.Tensor,
        seed: int,
    ) -> None:
        self.n = n = weights.shape[0]
        self.weights = weights
        # On the model's device: the round adds W_ii q into s there (sim.exchange).
        self.self_weight = torch.tensor(
            np.diag(weights).copy(), dtype=torch.float64, device=x0.device
        )
        self.faults = faults
        self.cipher = cipher
        self.seed = seed
        self.names = [f"site-{i:03d}" for i in range(n)]
        self.neighbours = [[int(j) for j in np.flatnonzero(weights[i]) if j != i] for i in range(n)]
        self.identities = [SiteIdentity.generate() for _ in range(n)]
        self.secrets: list[SecretKey] = [cipher.generate() for _ in range(n)]
        # What a contributor holds: the receiver's published key, parsed from its bytes.
        self.public: list[PublicKey] = [cipher.public_key(k.public.data) for k in self.secrets]
        start = x0.detach().to("cpu", torch.float32)
        self.outbox = {(j, i): Outbox(start.clone()) for i in range(n) for j in self.neighbours[i]}
        self.cipher_seconds = {"encrypt": 0.0, "aggregate": 0.0, "decrypt": 0.0}
        self._round: _SecureRound | None = None
        self._tails: NDArray[np.float64] | None = None  # of the last resolve
        self._receipts = np.zeros((n, n), dtype=bool)  # [i, j]: j's receipt reached i
        self.topic_bytes: Counter[str] = Counter()  # every frame's bytes, by topic

    def contribute(
        self,
        t: int,
        q: Sparse,
        xhat: torch.Tensor,
        working: NDArray[np.bool_],
        step: NDArray[np.float64] | None = None,
        validation: Announced | None = None,
    ) -> None:
        """Parts are taken from ``xhat`` on ``q``'s shared slots (the compressor left the
        tail its room: node.exchange.secure.validation_tail.TailRoom), then each site's
        validation tail; receipts say whether it has stopped. Secure frames carry no step
        announcement (as on nodes)."""
        # The engine refused other compressors already (require_shared_slots).
        assert q.indices is not None and q.indices.dim() == 1
        tails, stopped = np.zeros((self.n, SECURE_TAIL)), np.zeros(self.n, dtype=bool)
        if validation is not None:
            tails = tail_batch(validation.estimate, validation.stopped)
            stopped = validation.stopped
        xhat_cpu = xhat.detach().to("cpu", torch.float32)
        self._round = _SecureRound(t, xhat_cpu, q.indices, working, tails, stopped)
        self._tails = None

    def send(self, t: int, alive: NDArray[np.bool_]) -> Traffic:
        """Contributions, aggregation and forwarding (ciphertexts are really made and added
        here); what each receiver can open is decided, and decrypted at ``resolve``."""
        r = in_order(self._round, t)
        idx = r.indices.to("cpu")
        bytes_sent = np.zeros(self.n)
        self._receipts = np.zeros((self.n, self.n), dtype=bool)
        missed = 0
        plan: list[tuple[int, int, list[int]]] = []  # (receiver, aggregator, contributors)
        for i in range(self.n):
            absent = [self.names[j] for j in self.neighbours[i] if not alive[j]]
            names = [self.names[j] for j in self.neighbours[i]]
            picked = pick_aggregator(self.names[i], names, t, self.seed, absent)
            contributors = [j for j in self.neighbours[i] if r.working[j]]
            if not alive[i] or picked is None or not contributors:
                continue  # nobody contributes to a site that is down or has no aggregator
            plan.append((i, self.names.index(picked), contributors))
        hops = [(j, a) for i, a, cs in plan for j in cs if j != a]
        on_time, first_ms = self._deliveries(hops, alive)
        forwards_ok, second_ms = self._deliveries([(a, i) for i, a, _ in plan], alive)
        hop = 0
        slots = len(idx) + SECURE_TAIL
        for k, (i, a, contributors) in enumerate(plan):
            arrived: dict[int, Sealed] = {}
            for j in contributors:
                values = self.outbox[(j, i)].contribute(r.xhat[j], idx, t)
                part = np.concatenate([values.double().numpy(), r.tails[j]])
                began = time.perf_counter()
                sealed = self.cipher.encrypt(part * self.weights[i, j], self.public[i])
                self.cipher_seconds["encrypt"] += time.perf_counter() - began
                data = sealed.to_bytes()
                if j != a:
                    contrib = {"to": self.identities[i].peer_id, "sealed": data, "base": BASE}
                    bytes_sent[j] += self._frame(t, "contrib", contrib)
                    ok = bool(on_time[hop])
                    hop += 1
                else:
                    ok = bool(alive[a])
                if ok:
                    arrived[j] = open_envelope(data, self.cipher, self.public[i], slots)
            opened = self._aggregate(i, a, arrived, bool(forwards_ok[k]), bytes_sent, t, slots)
            included = set(arrived) if opened is not None else set()
            if opened is not None:
                r.sums.append((i, opened))
            for j in contributors:
                self.outbox[(j, i)].resolve(t, j in included)
                r.included[i, j] = j in included
            for j in self.neighbours[i]:
                receipt = self._receipt(j, t, j in included, bool(r.stopped[i]))
                bytes_sent[i] += self._frame(t, "receipt", receipt)
                self._receipts[j, i] = bool(alive[j])
            missed += len(contributors) - len(included)
        return Traffic(bytes_sent=bytes_sent, missed=missed, round_ms=first_ms + second_ms)

    def resolve(self, t: int, s: torch.Tensor) -> NDArray[np.bool_]:
        """Each receiver decrypts the sum it could open into s_i."""
        r = in_order(self._round, t)
        self._round = None
        idx = r.indices.to(s.device)
        n = len(idx)
        tails = np.zeros((self.n, SECURE_TAIL))
        for i, opened in r.sums:
            began = time.perf_counter()
            values = self.cipher.decrypt(opened, self.secrets[i])
            self.cipher_seconds["decrypt"] += time.perf_counter() - began
            s[i, idx] += torch.from_numpy(values[:n]).to(s.device, s.dtype)
            tails[i] += values[n:]
        self._tails = tails
        return r.included

    def heard_tails(self) -> NDArray[np.float64] | None:
        return self._tails

    def heard(self) -> NDArray[np.bool_]:
        """``[i, j]``: neighbour j's receipt of the last round reached i (receipts are
        delivered at once here), with its validation-stop flag."""
        return self._receipts

    def finish(self, s: torch.Tensor) -> None:
        """Nothing to deliver: what a receiver missed stays in its outboxes (a node's
        linger only closes receipts, which are not frames here)."""

    def _aggregate(
        self,
        i: int,
        a: int,
        arrived: dict[int, Sealed],
        forward_ok: bool,
        bytes_sent: NDArray[np.float64],
        round: int,
        slots: int,
    ) -> Sealed | None:
        """The aggregator adds and forwards; the receiver checks the record. Returns the
        sum the receiver can decrypt, if any."""
        if len(arrived) < 2:
            return None  # a sum of one would be that neighbour's update: never forwarded
        began = time.perf_counter()
        total = self.cipher.add(list(arrived.values()), self.public[i])
        data = total.to_bytes()
        names = [self.names[j] for j in self.neighbours[i]]
        record = sign_contributors(
            self.identities[a],
            self.names[i],
            round,
            [self.names[j] for j in arrived],
            names,
            data,
            BASE,
        )
        self.cipher_seconds["aggregate"] += time.perf_counter() - began
        bytes_sent[a] += self._frame(round, "sum", record.sum_fields(data))
        if not forward_ok:
            return None
        began = time.perf_counter()
        verify_contributors(record, self.identities[a].public_key, data)
        if not record.decryptable(names):
            return None
        opened = open_envelope(data, self.cipher, self.public[i], slots)
        self.cipher_seconds["decrypt"] += time.perf_counter() - began
        return opened

    def _frame(self, round: int, topic: str, fields: dict[str, Any]) -> int:
        """Wire bytes of the node's frame with this payload (:mod:`node.wire.sealed`),
        counted by topic too."""
        size = int(frame_size(PEER_ID_CHARS, round, topic, len(pack(fields))))
        self.topic_bytes[topic] += size
        return size

    def _receipt(self, j: int, round: int, included: bool, stopped: bool) -> dict[str, Any]:
        """The receipt a site sends neighbour j each round, in the node's form (one a round
        here; a node also sends them while it waits, and resends unacknowledged verdicts)."""
        return {
            "included": [round] if included else [],
            "through": round,
            "ack": round - 1,
            "key": self.public[j].key_id,
            "absent": [],
            "ready": True,
            "waiting": False,
            "base": BASE,
            "echo": BASE[:INCARNATION_BYTES],
            "stopped": stopped,
        }

    def _deliveries(
        self, hops: list[tuple[int, int]], alive: NDArray[np.bool_]
    ) -> tuple[NDArray[np.bool_], float]:
        """Which of these frames make the deadline, and how long the hop took (virtual ms)."""
        src = np.array([h[0] for h in hops], dtype=np.int64)
        dst = np.array([h[1] for h in hops], dtype=np.int64)
        if self.faults is None or not hops:
            return alive[dst].copy(), 0.0
        return self.faults.deliveries(src, dst, alive)

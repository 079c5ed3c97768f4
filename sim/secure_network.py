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
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from crypto.cipher import Cipher, PublicKey, Sealed, SecretKey, open_envelope
from crypto.identity import PEER_ID_CHARS, SiteIdentity
from node.exchange.outbox import Outbox
from node.exchange.plan import pick_aggregator, sign_contributors, verify_contributors
from node.wire.frames import frame_size
from node.wire.sealed import basis, pack
from node.wire.update import INCARNATION_BYTES
from sim.faults import FaultModel
from sim.network import Traffic

# Simulated sites never start over, so every receiver keeps its first basis; its size is
# what counts here (it is in every contribution, sum and receipt a node sends).
BASE = basis(bytes(INCARNATION_BYTES), 0)


class SecureSimNetwork:
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
        self.self_weight = torch.tensor(np.diag(weights).copy(), dtype=torch.float64)
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

    def exchange(
        self,
        xhat: torch.Tensor,
        s: torch.Tensor,
        indices: torch.Tensor,
        round: int,
        working: NDArray[np.bool_],
        alive: NDArray[np.bool_],
    ) -> Traffic:
        """One round of contributions, aggregation and decryption into every s_i."""
        xhat_cpu = xhat.detach().to("cpu", torch.float32)
        idx = indices.to("cpu")
        bytes_sent = np.zeros(self.n)
        missed = 0
        plan: list[tuple[int, int, list[int]]] = []  # (receiver, aggregator, contributors)
        for i in range(self.n):
            absent = [self.names[j] for j in self.neighbours[i] if not alive[j]]
            names = [self.names[j] for j in self.neighbours[i]]
            picked = pick_aggregator(self.names[i], names, round, self.seed, absent)
            contributors = [j for j in self.neighbours[i] if working[j]]
            if not alive[i] or picked is None or not contributors:
                continue  # nobody contributes to a site that is down or has no aggregator
            plan.append((i, self.names.index(picked), contributors))
        hops = [(j, a) for i, a, cs in plan for j in cs if j != a]
        on_time, first_ms = self._deliveries(hops, alive)
        forwards_ok, second_ms = self._deliveries([(a, i) for i, a, _ in plan], alive)
        hop = 0
        for k, (i, a, contributors) in enumerate(plan):
            arrived: dict[int, Sealed] = {}
            for j in contributors:
                values = self.outbox[(j, i)].contribute(xhat_cpu[j], idx, round)
                began = time.perf_counter()
                sealed = self.cipher.encrypt(
                    (values.double() * self.weights[i, j]).numpy(), self.public[i]
                )
                self.cipher_seconds["encrypt"] += time.perf_counter() - began
                data = sealed.to_bytes()
                if j != a:
                    contrib = {"to": self.identities[i].peer_id, "sealed": data, "base": BASE}
                    bytes_sent[j] += self._frame(round, "contrib", contrib)
                    ok = bool(on_time[hop])
                    hop += 1
                else:
                    ok = bool(alive[a])
                if ok:
                    arrived[j] = open_envelope(data, self.cipher, self.public[i], len(idx))
            included = self._aggregate_and_open(
                i, a, arrived, bool(forwards_ok[k]), s, idx, bytes_sent, round
            )
            for j in contributors:
                self.outbox[(j, i)].resolve(round, j in included)
            for j in self.neighbours[i]:
                receipt = self._receipt(j, round, j in included)
                bytes_sent[i] += self._frame(round, "receipt", receipt)
            missed += len(contributors) - len(included)
        return Traffic(
            bytes_sent=bytes_sent,
            missed=missed,
            round_ms=first_ms + second_ms,
        )

    def _aggregate_and_open(
        self,
        i: int,
        a: int,
        arrived: dict[int, Sealed],
        forward_ok: bool,
        s: torch.Tensor,
        idx: torch.Tensor,
        bytes_sent: NDArray[np.float64],
        round: int,
    ) -> set[int]:
        """The aggregator adds and forwards; the receiver checks and decrypts. Returns the
        contributors whose terms reached s_i."""
        if len(arrived) < 2:
            return set()  # a sum of one would be that neighbour's update: never forwarded
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
            return set()
        began = time.perf_counter()
        verify_contributors(record, self.identities[a].public_key, data)
        if not record.decryptable(names):
            return set()
        opened = open_envelope(data, self.cipher, self.public[i], len(idx))
        values = self.cipher.decrypt(opened, self.secrets[i])
        self.cipher_seconds["decrypt"] += time.perf_counter() - began
        s[i, idx.to(s.device)] += torch.from_numpy(values).to(s.device, s.dtype)
        return set(arrived)

    @staticmethod
    def _frame(round: int, topic: str, fields: dict[str, Any]) -> int:
        """Wire bytes of the node's frame with this payload (:mod:`node.wire.sealed`)."""
        return int(frame_size(PEER_ID_CHARS, round, topic, len(pack(fields))))

    def _receipt(self, j: int, round: int, included: bool) -> dict[str, Any]:
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

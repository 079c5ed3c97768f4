"""In-memory gossip network for the in-process simulator, with per-link backlogs.

Every directed edge j→i carries W_ij q_j each round. Frames that make the deadline on a
link with an empty backlog take a vectorised fast path (one sparse product for all of
them); every other link goes through :mod:`node.state.backlog`, exactly as a real site would:
numbered items, sent once, resent when unacknowledged, applied once and in order.

Bytes are those of the frames a node would put on the wire for the same traffic —
length prefix, signed envelope, item headers, values, indices (none for shared-index
compressors: the round is sent instead), the acknowledgement — sized by the codec's own
functions (:mod:`node.wire.update`, :mod:`node.wire.frames`), for every frame sent, retransmissions
and lost frames included. Acknowledgements are delivered with the frame here; on a node
they ride on the next frame, which the backlog's resend rule allows for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from crypto.identity import PEER_ID_CHARS
from node.gossip.sparse import Sparse
from node.state.backlog import InboundLink, Item, OutboundLink
from node.wire.frames import frame_size
from node.wire.update import (
    encoded_item_size,
    item_size,
    link_item_values,
    payload_size,
    row_index_widths,
    step_bytes,
    validation_bytes,
)
from sim.exchange import Announced, BatchedExchange, Traffic, in_order
from sim.faults import FaultModel


def update_frame_bytes(
    dim: int, round: int, ack: int, items_bytes: int, n_items: int, announced: int = 0
) -> int:
    """Wire bytes of one node's ``update`` frame (what :class:`node.runtime.Node` sends);
    ``announced``: the bytes of its ``step`` and ``val`` entries, inside the payload."""
    payload = payload_size(dim, ack, items_bytes, n_items) + announced
    return int(frame_size(PEER_ID_CHARS, round, "update", payload))


def dense_frame_bytes(dim: int, round: int) -> int:
    """Wire bytes of a frame carrying one whole model (dense references: FedAvg's upload,
    time-varying D-PSGD), in the node's codec."""
    items = item_size(round, dim, "dense", False)
    return update_frame_bytes(dim, round, round - 1, items, 1)


@dataclass
class _Round:
    """What one round's ``contribute`` left for ``send`` and ``resolve``."""

    t: int
    q: Sparse
    working: NDArray[np.bool_]
    step: NDArray[np.float64] | None
    validation: Announced | None  # what each sender's frames say of the validation stop
    dtype: torch.dtype  # of s (the backlog keeps items as s will add them)
    fast: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    fresh_seq: dict[int, int] = field(default_factory=dict)  # slow edge → round t's item
    arrivals: list[tuple[int, list[Item]]] = field(default_factory=list)


class SimNetwork(BatchedExchange):
    """Plaintext gossip: each round's contributions into every node's running sum s_i."""

    def __init__(
        self, weights: NDArray[np.float64], faults: FaultModel | None, device: torch.device
    ) -> None:
        n = weights.shape[0]
        off = weights.copy()
        np.fill_diagonal(off, 0.0)
        dst, src = np.nonzero(off)
        self.n = n
        self.src = src.astype(np.int64)
        self.dst = dst.astype(np.int64)
        self.w = off[dst, src]
        pairs = list(zip(self.src.tolist(), self.dst.tolist(), strict=True))
        edge = {pair: e for e, pair in enumerate(pairs)}
        self.reverse = np.array([edge[(i, j)] for j, i in pairs], dtype=np.int64)
        self.self_weight = torch.tensor(np.diag(weights).copy(), dtype=torch.float64, device=device)
        self.faults = faults
        self.device = device
        self._src_t = torch.from_numpy(self.src).to(device)
        self._dst_t = torch.from_numpy(self.dst).to(device)
        self._w_t = torch.from_numpy(self.w).to(device)
        self.outbound = [OutboundLink() for _ in range(len(src))]
        self.inbound = [InboundLink() for _ in range(len(src))]
        self.has_backlog = np.zeros(len(src), dtype=bool)
        self.announced = np.full((len(src), 2), np.nan)  # (stamp, step) a link last carried
        self.delivered = np.zeros(len(src), dtype=bool)  # the last round's frames that arrived
        adjacency = torch.zeros(n, n, dtype=torch.bool)
        adjacency[torch.from_numpy(self.dst), torch.from_numpy(self.src)] = True
        self.adjacency = adjacency
        self._round: _Round | None = None

    def _mixing(self, edges: NDArray[np.bool_]) -> torch.Tensor:
        """Sparse N×N matrix with W_ij at (i, j) for the chosen edges."""
        keep = torch.from_numpy(edges).to(self.device)
        index = torch.stack([self._dst_t[keep], self._src_t[keep]])
        return torch.sparse_coo_tensor(
            index, self._w_t[keep], (self.n, self.n), check_invariants=False
        ).coalesce()

    def _fast(self, q: Sparse, s: torch.Tensor, edges: NDArray[np.bool_]) -> None:
        if not edges.any():
            return
        if q.shared:
            summed = torch.sparse.mm(self._mixing(edges).to(q.values.dtype), q.values)
            if q.indices is None:
                s.add_(summed)
            else:
                s[:, q.indices] += summed
            return
        assert q.indices is not None
        keep = torch.from_numpy(edges).to(self.device)
        src, dst = self._src_t[keep], self._dst_t[keep]
        w = self._w_t[keep].to(q.values.dtype)
        flat_index = (dst * q.dim).unsqueeze(1) + q.indices[src]
        s.view(-1).index_add_(
            0, flat_index.reshape(-1), (w.unsqueeze(1) * q.values[src]).reshape(-1)
        )

    def _fast_bytes(
        self,
        q: Sparse,
        round: int,
        edges: NDArray[np.int64],
        acks: NDArray[np.int64],
        announced: NDArray[np.int64],
    ) -> NDArray[np.int64]:
        """Wire bytes of the one-item frames on ``edges`` (vectorised over edges)."""
        seq = np.array([self.outbound[e].next_seq for e in edges], dtype=np.int64)
        count = q.kept.cpu().numpy().astype(np.int64)[self.src[edges]]
        kind = "dense" if q.indices is None else ("shared" if q.shared else "explicit")
        width: NDArray[np.int64] | None = None
        if kind == "explicit":
            assert q.indices is not None
            width = row_index_widths(q.indices, q.kept, q.dim)[self.src[edges]]
        items = item_size(seq, count, kind, q.quantum is not None, q.shared_round or 0, width)
        payload = payload_size(q.dim, acks, items, np.ones_like(seq)) + announced
        return frame_size(PEER_ID_CHARS, np.full_like(seq, round), "update", payload)

    def contribute(
        self,
        t: int,
        q: Sparse,
        xhat: torch.Tensor,
        working: NDArray[np.bool_],
        step: NDArray[np.float64] | None = None,
        validation: Announced | None = None,
    ) -> None:
        """Rows of non-working sites are ignored; x̂ is not needed (q is the item)."""
        self._round = _Round(t, q, working, step, validation, xhat.dtype)

    def send(self, t: int, alive: NDArray[np.bool_]) -> Traffic:
        r = in_order(self._round, t)
        if self.faults is not None:
            on_time, round_ms = self.faults.deliveries(self.src, self.dst, alive)
        else:
            on_time, round_ms = np.ones(len(self.src), dtype=bool), 0.0
        q, fresh = r.q, r.working[self.src]
        sending = alive[self.src] & (fresh | self.has_backlog)
        r.fast = sending & fresh & on_time & ~self.has_backlog
        # The ack on j→i is what j has applied of i's items when the round starts.
        acks = np.array([link.applied for link in self.inbound], dtype=np.int64)[self.reverse]
        bytes_sent = np.zeros(self.n)
        # What each frame announces besides its items, inside its payload: the step when
        # it changed, the validation-stop estimate (or stop) in every frame.
        announced = np.zeros(len(self.src), dtype=np.int64)
        if r.step is not None:
            announce = sending & (r.step[self.src] != self.announced).any(1)
            announced[announce] += step_bytes(int(r.step[0, 0]))
            self.announced[announce] = r.step[self.src[announce]]
        if r.validation is not None:
            stopped = r.validation.stopped
            val = np.where(stopped, validation_bytes(True), validation_bytes(False))
            announced += val[self.src].astype(np.int64)
        # Frames that arrive this round: what a receiver hears of its neighbours' values.
        self.delivered = sending & on_time
        fast_edges = np.flatnonzero(r.fast)
        if len(fast_edges):
            frames = self._fast_bytes(q, t, fast_edges, acks[fast_edges], announced[fast_edges])
            np.add.at(bytes_sent, self.src[fast_edges], frames.astype(np.float64))
            for e in fast_edges:  # sent and applied, as on a node: numbering moves on
                self.outbound[e].next_seq += 1
                self.inbound[e].applied += 1
        for e in np.flatnonzero(sending & ~r.fast):
            j = int(self.src[e])
            link = self.outbound[e]
            if fresh[e]:
                row = q.row(j)
                kept = int(row.kept[0])  # top-k:adaptive pads rows to the largest k
                idx = None if row.indices is None else row.indices.reshape(-1)
                values, quantum = link_item_values(row, float(self.w[e]))
                if idx is not None and not q.shared:
                    idx, values = idx[:kept], values[:kept]
                if idx is not None:
                    idx = idx.to(self.device)
                link.push(idx, values.to(self.device, r.dtype), row.shared_round, quantum)
                r.fresh_seq[int(e)] = link.next_seq - 1
            items = link.frame(t)
            size = sum(encoded_item_size(item) for item in items)
            bytes_sent[j] += update_frame_bytes(
                q.dim, t, int(acks[e]), size, len(items), int(announced[e])
            )
            link.mark_sent(items, t)
            self.has_backlog[e] = bool(link.pending)
            if on_time[e]:
                r.arrivals.append((int(e), items))
        return Traffic(
            bytes_sent=bytes_sent,
            missed=int((sending & ~on_time).sum()),
            round_ms=round_ms,
        )

    def resolve(self, t: int, s: torch.Tensor) -> NDArray[np.bool_]:
        r = in_order(self._round, t)
        self._round = None
        self._fast(r.q, s, r.fast)
        for e, items in r.arrivals:
            link = self.outbound[e]
            link.ack(self.inbound[e].accept(items, s[int(self.dst[e])]))
            self.has_backlog[e] = bool(link.pending)
        # Round t's part of j is in s_i when its item was applied: at once on the fast
        # path; on a link with a backlog only in order (a lost older item holds it back).
        included = np.zeros((self.n, self.n), dtype=bool)
        included[self.dst[r.fast], self.src[r.fast]] = True
        for e, seq in r.fresh_seq.items():
            if self.inbound[e].applied >= seq:
                included[self.dst[e], self.src[e]] = True
        return included

    def heard(self) -> NDArray[np.bool_]:
        """(N, N): ``[i, j]`` when j's frame of the last round reached i in time."""
        out = np.zeros((self.n, self.n), dtype=bool)
        out[self.dst[self.delivered], self.src[self.delivered]] = True
        return out

    def heard_steps(self, values: torch.Tensor) -> torch.Tensor:
        spread = torch.where(self.adjacency, values.unsqueeze(0), math.inf)
        return spread.min(1).values

    def finish(self, s: torch.Tensor) -> None:
        """Deliver every backlog, as a node's linger does (the engine stops at its last
        round's results; the conformance kit and tests call this to check the sums)."""
        for e in np.flatnonzero(self.has_backlog):
            link = self.outbound[e]
            link.ack(self.inbound[e].accept(list(link.pending), s[int(self.dst[e])]))
            self.has_backlog[e] = bool(link.pending)

"""In-memory gossip network for the in-process simulator, with per-link backlogs.

Every directed edge j→i carries W_ij q_j each round. Frames that make the deadline on a
link with an empty backlog take a vectorised fast path (one sparse product for all of
them); every other link goes through :mod:`node.backlog`, exactly as a real site would:
numbered items, retransmitted until applied, applied once and in order. Bytes are
counted for every frame put on the wire, retransmissions and lost frames included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from node.backlog import InboundLink, OutboundLink
from node.sparse import Sparse
from sim.faults import FaultModel


@dataclass(frozen=True)
class Traffic:
    bytes_sent: NDArray[np.float64]  # (N,) this round, per sender
    delivered: int
    missed: int
    round_ms: float
    backlog_items: int


class SimNetwork:
    """Delivers each round's contributions into every node's running sum s_i."""

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
        self.self_weight = torch.tensor(np.diag(weights).copy(), dtype=torch.float64, device=device)
        self.faults = faults
        self.device = device
        self._src_t = torch.from_numpy(self.src).to(device)
        self._dst_t = torch.from_numpy(self.dst).to(device)
        self._w_t = torch.from_numpy(self.w).to(device)
        self.outbound = [OutboundLink() for _ in range(len(src))]
        self.inbound = [InboundLink() for _ in range(len(src))]
        self.has_backlog = np.zeros(len(src), dtype=bool)

    @property
    def degree(self) -> NDArray[np.int64]:
        return np.bincount(self.src, minlength=self.n)

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

    def exchange(
        self, q: Sparse, s: torch.Tensor, working: NDArray[np.bool_], alive: NDArray[np.bool_]
    ) -> Traffic:
        """Send this round's q (rows of non-working nodes are ignored) and fold arrivals into s."""
        if self.faults is not None:
            on_time, round_ms = self.faults.deliveries(self.src, self.dst, alive)
        else:
            on_time, round_ms = np.ones(len(self.src), dtype=bool), 0.0
        fresh = working[self.src]
        sending = alive[self.src] & (fresh | self.has_backlog)
        fast = sending & fresh & on_time & ~self.has_backlog
        wire = q.wire_bytes.cpu().numpy()
        bytes_sent = np.bincount(
            self.src[fast], weights=wire[self.src[fast]], minlength=self.n
        ).astype(np.float64)
        self._fast(q, s, fast)
        for e in np.flatnonzero(sending & ~fast):
            j, i = int(self.src[e]), int(self.dst[e])
            link = self.outbound[e]
            if fresh[e]:
                row_idx = None if q.indices is None else (q.indices if q.shared else q.indices[j])
                link.push(row_idx, float(self.w[e]) * q.values[j].clone(), float(wire[j]))
            bytes_sent[j] += link.backlog_bytes
            if on_time[e]:
                link.ack(self.inbound[e].accept(link.frame(), s[i]))
            self.has_backlog[e] = bool(link.pending)
        return Traffic(
            bytes_sent=bytes_sent,
            delivered=int((sending & on_time).sum()),
            missed=int((sending & ~on_time).sum()),
            round_ms=round_ms,
            backlog_items=int(
                sum(len(self.outbound[e].pending) for e in np.flatnonzero(self.has_backlog))
            ),
        )

    def flush_pending(self, s: torch.Tensor) -> None:
        """Deliver every backlog (used by tests and at the end of a run to check consistency)."""
        for e in np.flatnonzero(self.has_backlog):
            link = self.outbound[e]
            link.ack(self.inbound[e].accept(link.frame(), s[int(self.dst[e])]))
            self.has_backlog[e] = bool(link.pending)

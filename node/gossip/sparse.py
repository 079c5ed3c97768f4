"""``Sparse``: a batch of compressed update vectors, as a node holds them before encoding.

Rows are nodes (K = 1 on a site, K = N in the in-process simulator). Indices are either
per-row (top-k: they must be sent) or shared by every row (rand-k, block-k: every node
derives them from the public round seed, so they cost nothing and reveal nothing; the
codec sends only the round they belong to). What a row costs on the wire is not stored
here: :mod:`node.wire.update` sizes the frame that carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Sparse:
    """K compressed vectors of dimension ``dim``.

    ``values`` is (K, k). ``indices`` is (K, k) for per-row index sets, (k,) when shared,
    or None for a dense vector (then k = dim). ``kept`` is (K,) how many values each row
    really sends (top-k:adaptive keeps fewer than k in some rows, the rest are zero).
    ``quantum`` is (K,) for 8-bit quantized rows: every value is an integer level in
    [-127, 127] times its row's quantum, which is what the codec sends (one byte a value
    and one float32 a row). ``shared_round`` is the round whose public seed gave shared
    indices.
    """

    values: torch.Tensor
    indices: torch.Tensor | None
    dim: int
    kept: torch.Tensor
    quantum: torch.Tensor | None = None
    shared_round: int | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def shared(self) -> bool:
        return self.indices is None or self.indices.dim() == 1

    def to_dense(self) -> torch.Tensor:
        """The (K, dim) dense matrix these rows stand for."""
        if self.indices is None:
            return self.values.clone()
        out = torch.zeros(self.rows, self.dim, dtype=self.values.dtype, device=self.values.device)
        self.add_into(out)
        return out

    def add_into(self, target: torch.Tensor, scale: float = 1.0) -> None:
        """target[r] += scale * row r, in place (target is (K, dim))."""
        if self.indices is None:
            target.add_(self.values, alpha=scale)
        elif self.indices.dim() == 1:
            target[:, self.indices] += scale * self.values
        else:
            target.scatter_add_(1, self.indices, scale * self.values)

    def row(self, r: int) -> Sparse:
        """Row ``r`` as a one-row Sparse (what one node sends)."""
        idx = self.indices
        if idx is not None and idx.dim() == 2:
            idx = idx[r : r + 1]
        quantum = None if self.quantum is None else self.quantum[r : r + 1]
        return replace(
            self,
            values=self.values[r : r + 1],
            indices=idx,
            kept=self.kept[r : r + 1],
            quantum=quantum,
        )

    def scaled_rows(self, factors: torch.Tensor) -> Sparse:
        """Row r times ``factors[r]`` (its quantum too, so levels stay integers)."""
        column = factors.to(self.values.dtype).unsqueeze(1)
        quantum = None if self.quantum is None else self.quantum * factors.to(self.quantum.dtype)
        return replace(self, values=self.values * column, quantum=quantum)

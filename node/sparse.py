"""``Sparse``: a batch of compressed update vectors and what they cost on the wire.

Rows are nodes (K = 1 on a site, K = N in the in-process simulator). Indices are either
per-row (top-k: they must be sent) or shared by every row (rand-k, block-k: every node
derives them from the public round seed, so they cost nothing and reveal nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

FLOAT_BYTES = 4
INDEX_BYTES = 4


@dataclass(frozen=True)
class Sparse:
    """K compressed vectors of dimension ``dim``.

    ``values`` is (K, k). ``indices`` is (K, k) for per-row index sets, (k,) when shared,
    or None for a dense vector (then k = dim). ``kept`` is (K,) how many values each row
    really sends (top-k:adaptive keeps fewer than k in some rows, the rest are zero).
    ``value_bytes`` is 4 for float32 values, 1 after 8-bit quantization (plus a 4-byte
    scale per row, ``header_bytes``).
    """

    values: torch.Tensor
    indices: torch.Tensor | None
    dim: int
    kept: torch.Tensor
    value_bytes: int = FLOAT_BYTES
    header_bytes: int = 0

    @property
    def wire_bytes(self) -> torch.Tensor:
        """(K,) payload bytes of each row: values, per-row indices, header."""
        per_value = self.value_bytes + (0 if self.shared else INDEX_BYTES)
        return self.kept.to(torch.float64) * per_value + self.header_bytes

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
        return replace(self, values=self.values[r : r + 1], indices=idx, kept=self.kept[r : r + 1])

    def scaled(self, factor: float) -> Sparse:
        return replace(self, values=self.values * factor)

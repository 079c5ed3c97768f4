"""CHOCO-SGD gossip with public copies (Koloskova et al., 2019), for K nodes at once.

Each node i holds its model x_i, its public copy x̂_i (what its neighbours know of it),
and s_i = Σ_{j ∈ N(i) ∪ {i}} W_ij x̂_j. One round, after local training:

1. q_i = C(x_i − x̂_i);  x̂_i += q_i      (the residual stays in x_i − x̂_i: error feedback)
2. every neighbour j adds W_ji q_i to s_j; node i adds W_ii q_i to its own s_i
3. x_i += γ (s_i − x̂_i)

Step 2 is linear, so a contribution that arrives late, or is retransmitted from a
backlog, leaves s_i exactly where it would have been. With C = identity and γ = 1 this
is dense D-PSGD: x̂ = x and x_i ← Σ_j W_ij x_j.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from node.compress import AdaptiveTopK, Compressor, Identity, SharedIndexCompressor, TopK
from node.quantize import Quantized
from node.sparse import Sparse


@dataclass
class ChocoState:
    """The three (K, d) vectors of CHOCO gossip for K nodes."""

    x: torch.Tensor
    xhat: torch.Tensor
    s: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, common: torch.Tensor | None = None) -> ChocoState:
        """Start the public copies at the consortium's common initial model.

        Every node derives the same initial model from the public seed, so x̂_j = x₀ is
        already known to all and s_i = Σ_j W_ij x₀ = x₀ (W is doubly stochastic): exactly
        consistent without sending anything. Starting from x̂ = 0 instead would spend the
        first hundreds of compressed rounds just transmitting x₀.
        """
        if common is None:
            return cls(x, torch.zeros_like(x), torch.zeros_like(x))
        start = common.expand_as(x).clone()
        return cls(x, start, start.clone())


def compress_step(
    state: ChocoState,
    compressor: Compressor,
    round: int,
    active: torch.Tensor | None = None,
) -> Sparse:
    """Step 1: compress the residual and advance the public copy (inactive rows send zero)."""
    if isinstance(compressor, SharedIndexCompressor):
        # Shared-seed index set: only those columns of x − x̂ are needed (no (K, d) temporary).
        idx = compressor.indices(state.x.shape[1], round).to(state.x.device)
        columns = state.x[:, idx] - state.xhat[:, idx]
        q = compressor.compress_columns(columns, idx, state.x.shape[1], round)
    else:
        q = compressor.compress(state.x - state.xhat, round)
    if active is not None:
        q = replace(q.scaled_rows(active.to(q.values.dtype)), kept=q.kept * active)
    q.add_into(state.xhat)
    return q


def add_self_contribution(state: ChocoState, q: Sparse, self_weights: torch.Tensor) -> None:
    """Step 2 for the node's own term: s_i += W_ii q_i."""
    q.scaled_rows(self_weights).add_into(state.s)


def mix_step(state: ChocoState, gamma: float, active: torch.Tensor | None = None) -> None:
    """Step 3: x_i += γ (s_i − x̂_i) for active rows."""
    if active is None:
        state.x.add_(state.s, alpha=gamma).sub_(state.xhat, alpha=gamma)
        return
    delta = state.s - state.xhat
    delta.mul_(active.to(delta.dtype).unsqueeze(1))
    state.x.add_(delta, alpha=gamma)


def consensus_distance(x: torch.Tensor) -> float:
    """Mean squared distance of the rows to their average: 0 exactly at consensus."""
    return float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())


def auto_gamma(compressor: Compressor, dim: int) -> float:
    """The default consensus step γ for a compressor on a ``dim``-parameter model.

    γ has to shrink with the compressor's contraction δ or the public copies lag behind and
    the nodes drift apart. Seed-chosen indices (rand-k, block-k) contract by exactly their
    kept fraction, so γ = kept/dim. Top-k contracts far better than its fraction on real
    updates (the mass sits in few coordinates); γ = 0.1·(100·F)^0.65 is the curve through
    the best stable values of the γ sweep in ``make bench`` (0.1 at 1%, 0.45 at 10%),
    capped at γ = 1 (dense D-PSGD) from F ≈ 35%. Quantization keeps the inner compressor's γ.
    """
    inner = compressor.inner if isinstance(compressor, Quantized) else compressor
    if isinstance(inner, Identity):
        return 1.0
    if isinstance(inner, SharedIndexCompressor):
        return max(1, inner.indices(dim, 0).numel()) / dim
    if isinstance(inner, AdaptiveTopK):
        fraction = float(inner.ratios.mean())
    elif isinstance(inner, TopK):
        fraction = inner.fraction
    else:
        raise TypeError(f"no default γ for compressor {compressor.name!r}: pass --gamma")
    return float(min(1.0, 0.1 * (100.0 * fraction) ** 0.65))

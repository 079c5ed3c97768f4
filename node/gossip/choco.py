"""CHOCO-SGD gossip with public copies (Koloskova et al., 2019), for K nodes at once.

Each node i holds its model x_i, its public copy x̂_i (what its neighbours know of it),
and s_i = Σ_{j ∈ N(i) ∪ {i}} W_ij x̂_j. One round, after local training:

1. q_i = C(x_i − x̂_i);  x̂_i += q_i      (the residual stays in x_i − x̂_i: error feedback)
2. every neighbour j adds W_ji q_i to s_j; node i adds W_ii q_i to its own s_i
3. x_i += γ (s_i − x̂_i); on the coordinates every site kept this round (rand-k,
   block-k: one index set from the public round seed), with step 1, where γ is the
   analysed one (:func:`mix_step`)

Step 2 is linear, so a contribution that arrives late, or is retransmitted from a
backlog, leaves s_i exactly where it would have been. With C = identity and γ = 1 this
is dense D-PSGD: x̂ = x and x_i ← Σ_j W_ij x_j.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from node.gossip.compress import Compressor, SharedIndexCompressor
from node.gossip.sparse import Sparse


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


def fresh_columns(q: Sparse) -> torch.Tensor | None:
    """The coordinates every site kept this round (a shared index set), or None."""
    if q.indices is None or q.indices.dim() != 1:
        return None
    return q.indices


def mix_step(
    state: ChocoState,
    gamma: float | torch.Tensor,
    active: torch.Tensor | None = None,
    fresh: torch.Tensor | None = None,
) -> None:
    """Step 3: x_i += γ_i (s_i − x̂_i) for active rows (γ one value, or (K,) per row);
    the ``fresh`` columns, the round's shared index set, with step 1 instead.

    Why step 1 there: where every site kept the same coordinates, step 1 has just set
    x̂_j = x_j on them at every site (up to 8-bit rounding), so s_i − x̂_i is there the
    exact gossip step Σ_j W_ij x_j − x_i, and step 1 takes it whole: those coordinates
    become the W-average of the current models, a convex combination, stable on any graph.
    γ, which only stale public copies limit, is the step of the other coordinates. On
    16-site graphs this mixes 1.7× (ring) to 2.3× (torus) faster per round than one γ for
    all (:mod:`node.gossip.step_size`), for the same bytes; the average stays exactly where
    W puts it, as Σ_i (s_i − x̂_i) = 0 in every coordinate (where every row mixes and
    every contribution of the round is in s: a missing one moves the kept coordinates
    once, in full, where γ moved them by γ a round until it came). Callers pass ``fresh``
    where the guard's γ was analysed for it (``StepGuard.fresh``), never with a γ set by
    hand."""
    if isinstance(gamma, torch.Tensor) and bool((gamma == gamma[0]).all()):
        gamma = float(gamma[0])  # the agreed step is one value: no (K, d) temporary
    if fresh is not None:
        fresh = fresh.to(state.x.device)
        step = state.s[:, fresh] - state.xhat[:, fresh]
        if active is not None:
            step.mul_(active.to(step.dtype).unsqueeze(1))
        kept = state.x[:, fresh] + step
    if active is None and not isinstance(gamma, torch.Tensor):
        if gamma:
            state.x.add_(state.s, alpha=gamma).sub_(state.xhat, alpha=gamma)
    else:
        _gamma_step(state, gamma, active)
    if fresh is not None:
        state.x[:, fresh] = kept


def _gamma_step(
    state: ChocoState, gamma: float | torch.Tensor, active: torch.Tensor | None
) -> None:
    delta = state.s - state.xhat
    if isinstance(gamma, torch.Tensor):
        delta.mul_(gamma.to(delta.dtype).unsqueeze(1))
    else:
        delta.mul_(gamma)
    if active is not None:
        delta.mul_(active.to(delta.dtype).unsqueeze(1))
    state.x.add_(delta)


def consensus_distance(x: torch.Tensor) -> float:
    """Mean squared distance of the rows to their average: 0 exactly at consensus."""
    return float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())

"""The CHOCO consensus step γ, derived from what every site knows.

Why γ matters. CHOCO-SGD (Koloskova, Stich & Jaggi, "Decentralized Stochastic Optimization
and Gossip Algorithms with Compressed Communication", ICML 2019) mixes with public copies:
x̂_i += C(x_i − x̂_i), then x_i += γ Σ_j W_ij (x̂_j − x̂_i). Too large a γ and the public
copies lag the models they stand for; the lag feeds back and the consensus distance grows
exponentially (seen on a torus with top-k 1% and γ = 0.1: ×10⁴ over 1,000 rounds). Their
Theorem 2 gives a γ that is safe for every δ-contraction C,
γ* = ρ²δ / (16ρ + ρ² + 4β² + 2ρβ² − 8ρδ) with ρ the spectral gap and β = ‖I − W‖₂, but it
is far too small to use (3·10⁻⁶ on a 16-site ring at δ = 0.01: no consensus in any run).

What we use instead: the exact mean-square dynamics of compressed gossip. For the
shared-index compressors (rand-k, block-k) every site keeps the same coordinates in a
round, each coordinate with the same probability p per round, independently across rounds.
Then gossip without training decouples exactly into the eigenmodes of W (μ = 1 − λ, the
eigenvalues of I − W) and the coordinates: per mode, (x, h) with h the public copy moves as

    kept (prob. p):     h' = x,  x' = (1 − γμ) x
    not kept (1 − p):   h' = h,  x' = x − γμ h

and the second moments v = (E x², E xh, E h²) evolve linearly, v' = M(γ, μ, p) v with

    M = p [[a², 0, 0], [a, 0, 0], [1, 0, 0]] + (1 − p) [[1, −2c, c²], [0, 1, −c], [0, 0, 1]],
    a = 1 − γμ, c = γμ.

The consensus error's second moment contracts per round by the spectral radius
r(γ) = max over the non-zero modes μ of ρ(M(γ, μ, p)): mean-square stable exactly when
r < 1. r(γ) is flat near its minimum on the small-γ side and rises steeply past it into
instability, so we take the smallest γ whose decay 1 − r is 80% of the best decay: 20%
slower consensus than the optimum, for a margin of 25–65% below the stability edge
(16-site ring at p = 0.01, one γ for every coordinate as top-k mixes: γ = 0.0054,
optimum 0.0067, edge 0.0075).

Beyond CHOCO: the coordinates every site kept mix with step 1. With a shared index set,
step 1 of the round sets every site's public copy equal to its model on the kept
coordinates, so there s_i − x̂_i = Σ_j W_ij x_j − x_i is the exact gossip step, and
:func:`node.gossip.choco.mix_step` takes it whole: those coordinates become the
W-average of the current models (randomised coordinate gossip, a convex combination,
stable on any graph). Only the other coordinates, whose public copies are stale, need a
damped step, and γ is theirs. In the model above the kept branch becomes x' = (1 − μ) x
(``fresh``) and γ is chosen from M by the same rule; on 16-site graphs at p = 0.1 that is
γ = 0 on the torus, exponential and 4-regular graphs and 0.003–0.007 on the ring,
Watts–Strogatz and Erdős–Rényi graphs, and the error decays 1.7× (ring) to 2.3× (torus)
as fast per round as with one γ for all, for the same bytes
(``tests/test_step_size.py`` measures it on real gossip). Top-k keeps other coordinates
at every site, so its public copies are never all fresh: one γ for all, as above.

The contraction p each compressor brings (:func:`contraction`): exact for rand-k (k/d) and
block-k (blocks taken over blocks: every coordinate has that probability); for top-k the
worst case k/d (top-k keeps at least that share of the residual's energy every round, and
keeps the largest coordinates, which only helps); 8-bit quantization multiplies it by
1 − k/(4·127²) (stochastic rounding adds at most a quarter level² per value, unbiased);
identity is dense D-PSGD, γ = min(1, 2/(μ_min + μ_max)). Each site computes the same γ
from the public graph, the compressor spec and the model's dimension.

The runtime guard that watches each site's residuals and agrees one γ across the
consortium is :mod:`node.gossip.step_guard`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.typing import NDArray

from node.errors import ConfigError
from node.gossip.compress import (
    AdaptiveTopK,
    Compressor,
    Identity,
    SharedIndexCompressor,
    Stacked,
    StackedIndex,
    TopK,
    keep_count,
)
from node.gossip.quantize import LEVELS, Quantized

DECAY_SHARE = 0.8  # accept 80% of the best decay rate, taking the smallest such γ


def contraction(compressor: Compressor, dim: int) -> list[float]:
    """The mean-square contraction δ of ``compressor`` on a ``dim``-vector: one value, or one
    per site for top-k:adaptive (each site keeps its own share)."""
    total = dim
    inner = compressor.inner if isinstance(compressor, Quantized) else compressor
    if isinstance(inner, Stacked | StackedIndex):  # murmur-gt: model and tracker, each d
        dim //= inner.parts
        inner = inner.inner
    if isinstance(inner, Identity):
        deltas = [1.0]
    elif isinstance(inner, SharedIndexCompressor):
        deltas = [inner.kept_fraction(dim)]
    elif isinstance(inner, AdaptiveTopK):
        deltas = inner.row_fractions(dim)
    elif isinstance(inner, TopK):
        deltas = [keep_count(inner.fraction, dim) / dim]
    else:
        raise ConfigError(f"no contraction known for compressor {compressor.name!r}: pass --gamma")
    if isinstance(compressor, Quantized):  # k = δ·total values share one row's quantum
        deltas = [d * (1.0 - min(1.0, d * total / (4.0 * LEVELS**2))) for d in deltas]
    return deltas


def mixing_modes(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """The non-zero eigenvalues μ of I − W (the consensus modes) of a symmetric W."""
    mu = 1.0 - np.linalg.eigvalsh(weights)
    return np.asarray(mu[mu > 1e-9], dtype=np.float64)


def second_moment_rate(
    gammas: NDArray[np.float64], modes: NDArray[np.float64], p: float, fresh: bool = False
) -> NDArray[np.float64]:
    """r(γ): the per-round contraction of the consensus error's second moment, for each γ.
    ``fresh``: the coordinates kept in a round mix with step 1 and γ is the step of the
    others (shared-index compressors, :func:`node.gossip.choco.mix_step`)."""
    g = gammas[:, None]
    c = g * modes[None, :]
    a = 1.0 - (np.broadcast_to(modes[None, :], c.shape) if fresh else c)
    m = np.zeros((*c.shape, 3, 3))
    m[..., 0, 0] = p * a * a + (1 - p)
    m[..., 0, 1] = -2 * (1 - p) * c
    m[..., 0, 2] = (1 - p) * c * c
    m[..., 1, 0] = p * a
    m[..., 1, 1] = 1 - p
    m[..., 1, 2] = -(1 - p) * c
    m[..., 2, 0] = p
    m[..., 2, 2] = 1 - p
    radius: NDArray[np.float64] = np.abs(np.linalg.eigvals(m)).max(axis=-1).max(axis=-1)
    return radius


@dataclass(frozen=True)
class StepChoice:
    gamma: float
    rate: float  # r(γ): per-round second-moment contraction at the chosen γ
    edge: float  # the largest mean-square stable γ (≥ gamma)


def choose_gamma(weights: NDArray[np.float64], delta: float, fresh: bool = False) -> StepChoice:
    """The consensus step for mixing matrix ``weights`` and contraction ``delta``
    (``fresh``: of the coordinates not kept, the kept ones mixing with step 1)."""
    return _choose(tuple(np.round(mixing_modes(weights), 12)), round(delta, 12), fresh)


@lru_cache(maxsize=256)
def _choose(modes_key: tuple[float, ...], delta: float, fresh: bool = False) -> StepChoice:
    modes = np.array(modes_key)
    if not len(modes):  # a single site: nothing to mix
        return StepChoice(1.0, 0.0, 1.0)
    if delta >= 1.0:
        gamma = min(1.0, 2.0 / (float(modes.min()) + float(modes.max())))
        rate = float(np.abs(1.0 - gamma * modes).max() ** 2)
        return StepChoice(gamma, rate, min(1.0, 2.0 / float(modes.max())))
    hi = min(1.0, 4.0 * delta)
    # With fresh coordinates, γ = 0 (they alone mix) is stable and often the optimum.
    gammas = np.concatenate([[0.0] if fresh else [], np.geomspace(delta / 1000.0, hi, 400)])
    rates = second_moment_rate(gammas, modes, delta, fresh)
    best = int(np.argmin(rates))
    # Refine around the optimum on a fine linear grid, then take the smallest γ whose decay
    # reaches DECAY_SHARE of the best.
    lo_g = gammas[max(best - 1, 0)]
    hi_g = gammas[min(best + 1, len(gammas) - 1)]
    fine = np.linspace(lo_g, hi_g, 200)
    fine_rates = second_moment_rate(fine, modes, delta, fresh)
    top = float(1.0 - fine_rates.min())
    grid = np.concatenate([gammas[gammas < lo_g], fine])
    grid_rates = np.concatenate([rates[gammas < lo_g], fine_rates])
    ok = np.flatnonzero(1.0 - grid_rates >= DECAY_SHARE * top)
    gamma = float(grid[ok[0]])
    stable = gammas[rates < 1.0]
    edge = float(stable.max()) if len(stable) else gamma
    return StepChoice(gamma, float(grid_rates[ok[0]]), max(edge, gamma))


def auto_gammas(compressor: Compressor, dim: int, weights: NDArray[np.float64]) -> list[float]:
    """γ per contraction of :func:`contraction` (one value, or one per site)."""
    fresh = shares_indices(compressor)
    return [choose_gamma(weights, d, fresh).gamma for d in contraction(compressor, dim)]


def shares_indices(compressor: Compressor) -> bool:
    """Whether the coordinates every site keeps in a round mix with step 1
    (:func:`node.gossip.choco.mix_step`): rand-k and block-k, 8-bit or not, whose one
    index set leaves those coordinates of every public copy fresh. Not ``murmur-gt``'s
    stacked model and tracker: with block-k 10% (16 sites, 5 local steps, 200 rounds),
    step 1 there raised its peak consensus distance in 3 cells of 4 (Wisconsin on the
    exponential graph 23 → 58, NCCTG lung 5.1 → 12.2 there and 7.7 → 9.8 on a ring) and
    lowered it in the fourth (Wisconsin on a ring, 1,940 → 1,130): the tracker's other
    coordinates then wait ~1/p rounds to mix, gathering local steps meanwhile. It keeps
    one γ for all. The mixing sites also leave out a γ set by hand (``--gamma 0.05``):
    step 1 on the kept coordinates lowers the largest stable γ for the rest (16-site
    torus, rand-k 10%: from 0.066 to 0.023), so a γ chosen as one step for every
    coordinate is used for every coordinate."""
    layer: object = compressor
    while layer is not None:  # through 8-bit and secure aggregation's wrappers
        if isinstance(layer, Stacked | StackedIndex):
            return False
        layer = getattr(layer, "inner", None)
    inner = compressor.inner if isinstance(compressor, Quantized) else compressor
    return isinstance(inner, SharedIndexCompressor)


def theorem_gamma(weights: NDArray[np.float64], delta: float) -> float:
    """CHOCO-SGD's Theorem 2 step, for comparison only (far too small to use)."""
    modes = mixing_modes(weights)
    rho = float(modes.min())
    beta = float(modes.max())
    return rho**2 * delta / (16 * rho + rho**2 + 4 * beta**2 + 2 * rho * beta**2 - 8 * rho * delta)


def realized_contraction(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """1 − ‖e − C(e)‖²/‖e‖² per row from the residual energies before and after a
    compression step (0 where the residual was already zero)."""
    ratio = after / before.clamp_min(torch.finfo(before.dtype).tiny)
    return torch.where(before > 0, 1.0 - ratio, torch.zeros_like(ratio)).clamp(0.0, 1.0)


def _grid_down(delta: float) -> float:
    """δ rounded down onto a grid of 32 steps a decade, so γ is computed for few values."""
    return float(10 ** (math.floor(math.log10(max(delta, 1e-12)) * 32) / 32))

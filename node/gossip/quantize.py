"""Unbiased 8-bit stochastic quantization, composable with any compressor.

Each row's kept values are scaled by their max magnitude onto 127 levels and rounded
up or down at random with the probability that makes E[Q(v)] = v (stochastic rounding),
so quantization adds variance but no bias. On the wire: one signed byte a value and one
float32 quantum a row (:mod:`node.wire.update`).

As a compressor: ‖Q(v) − v‖² ≤ k·(max|v|/127)²/4 ≤ ‖v‖²·k/(4·127²), so quantizing the
output of a δ-contraction gives a δ(1 − k/(4·127²))-contraction in expectation
(:func:`node.gossip.step_size.contraction`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from node.gossip.sparse import Sparse
from node.training.sampling import uniforms

if TYPE_CHECKING:
    from node.gossip.compress import Compressor

LEVELS = 127


def stochastic_levels(
    values: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, k) values → integer levels in [-127, 127] (as floats) and the (K,) quantum;
    ``noise`` is uniform in [0, 1), (K, k), and decides each rounding."""
    scale = values.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    level = values / scale * LEVELS
    return torch.floor(level + noise.to(values.device)).clamp_(-LEVELS, LEVELS), (
        scale / LEVELS
    ).squeeze(1)


def stochastic_quantize(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Quantize (K, k) values row-wise to 8 bits and return the dequantized values."""
    noise = torch.rand(values.shape, generator=generator, dtype=values.dtype)
    levels, quantum = stochastic_levels(values, noise)
    return levels * quantum.unsqueeze(1)


DITHER_STREAM = 1  # node.training.sampling's stream for the rounding noise


def dither(seed: int, round: int, sites: torch.Tensor, width: int) -> torch.Tensor:
    """(K, width) rounding noise in [0, 1) for ``sites`` in ``round``. Each site has its
    own (its rounding errors are independent of its neighbours'), keyed by the public
    seed, the round and the site's index in the consortium, so a node and the
    simulator's row for that site round alike. On a 2⁻²⁴ grid, so that float32 holds it
    exactly (a uniform just below 1 must not round up to 1)."""
    u = uniforms(seed, sites, round, width, stream=DITHER_STREAM)
    return torch.floor(u * 2.0**24) / 2.0**24


class Quantized:
    """Wraps a compressor: same index set, 8-bit values."""

    def __init__(self, inner: Compressor, seed: int, first_site: int = 0) -> None:
        """``first_site``: the consortium index of the first row compressed (a node
        compresses only its own; the simulator, every site's from 0)."""
        self.inner = inner
        self.seed = seed
        self.first_site = first_site
        self.name = f"{inner.name}+q8"

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        sparse = self.inner.compress(vectors, round)
        rows, width = sparse.values.shape
        sites = torch.arange(self.first_site, self.first_site + rows)
        noise = dither(self.seed, round, sites, width).to(sparse.values.dtype)
        levels, quantum = stochastic_levels(sparse.values, noise)
        return replace(sparse, values=levels * quantum.unsqueeze(1), quantum=quantum)

    def kept_fraction(self, dim: int) -> float:
        return self.inner.kept_fraction(dim)

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

if TYPE_CHECKING:
    from node.gossip.compress import Compressor

LEVELS = 127


def stochastic_levels(
    values: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, k) values → integer levels in [-127, 127] (as floats) and the (K,) quantum."""
    scale = values.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    level = values / scale * LEVELS
    noise = torch.rand(values.shape, generator=generator, dtype=values.dtype).to(values.device)
    return torch.floor(level + noise).clamp_(-LEVELS, LEVELS), (scale / LEVELS).squeeze(1)


def stochastic_quantize(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Quantize (K, k) values row-wise to 8 bits and return the dequantized values."""
    levels, quantum = stochastic_levels(values, generator)
    return levels * quantum.unsqueeze(1)


class Quantized:
    """Wraps a compressor: same index set, 8-bit values."""

    def __init__(self, inner: Compressor, seed: int) -> None:
        self.inner = inner
        self.seed = seed
        self.name = f"{inner.name}+q8"

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        from node.gossip.compress import round_generator

        sparse = self.inner.compress(vectors, round)
        levels, quantum = stochastic_levels(sparse.values, round_generator(self.seed, round, 3))
        return replace(sparse, values=levels * quantum.unsqueeze(1), quantum=quantum)

    def kept_fraction(self, dim: int) -> float:
        return self.inner.kept_fraction(dim)

"""Unbiased 8-bit stochastic quantization, composable with any compressor.

Each row's kept values are scaled by their max magnitude onto 127 levels and rounded
up or down at random with the probability that makes E[Q(v)] = v (stochastic rounding),
so quantization adds variance but no bias. Wire cost: 1 byte per value + a 4-byte scale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from node.sparse import FLOAT_BYTES, Sparse

if TYPE_CHECKING:
    from node.compress import Compressor

LEVELS = 127


def stochastic_quantize(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Quantize (K, k) values row-wise to 8 bits and return the dequantized values."""
    scale = values.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    level = values / scale * LEVELS
    noise = torch.rand(values.shape, generator=generator, dtype=values.dtype).to(values.device)
    q = torch.floor(level + noise).clamp_(-LEVELS, LEVELS)
    return q * scale / LEVELS


class Quantized:
    """Wraps a compressor: same index set, 8-bit values."""

    def __init__(self, inner: Compressor, seed: int) -> None:
        self.inner = inner
        self.seed = seed
        self.name = f"{inner.name}+q8"

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        from node.compress import round_generator

        sparse = self.inner.compress(vectors, round)
        values = stochastic_quantize(sparse.values, round_generator(self.seed, round, 3))
        # Each 4-byte float becomes 1 byte; one 4-byte scale per row.
        return replace(sparse, values=values, value_bytes=1, header_bytes=FLOAT_BYTES)

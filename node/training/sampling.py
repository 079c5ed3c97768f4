"""Counter-based minibatch sampling: a site's batches are a pure function of where it is.

Row k of a trainer (site ``first_row + k`` of the consortium) draws its d-th batch from
uniforms that depend only on (public seed, site, d): a node training its one row and the
simulator training every site's row at once draw the same batches, and the simulator
does it in a few vectorised integer operations for any number of sites (one generator
per row cost ~0.07 ms a row per step, 70 ms a step at 1,000 sites). A checkpoint holds
the draw counter, not a generator's state.

+q8's stochastic rounding draws from the same hash on its own stream (a site's rounding
in round t), for the same reasons.

The uniforms come from a 32-bit integer hash (Wellons' "lowbias32", two multiply-xorshift
rounds) applied in turn to the seed, the site, the draw and the position in the batch,
computed in int64 without overflow. This is for choosing minibatch rows, where any
well-mixed sequence will do; nothing secret is drawn here (DP's sampling and noise use
the site's secret generators, node.training.dp).
"""

from __future__ import annotations

import torch

MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for x in [0, 2³²), without an int64 overflow: c in 16-bit halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection on 32-bit values with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(
    seed: int, sites: torch.Tensor, draw: int, count: int, stream: int = 0
) -> torch.Tensor:
    """(K, count) uniforms in [0, 1) for the ``draw``-th batch of each of ``sites`` (K,);
    ``stream`` keeps other uses apart (0: minibatches; 1: +q8's rounding)."""
    key = _mix(torch.tensor((seed >> 32) & MASK, dtype=torch.int64))
    key = _mix(key ^ (seed & MASK))
    row = _mix(key ^ _mix(sites.to(torch.int64) & MASK))
    row = _mix(row ^ (draw & MASK))
    if stream:
        row = _mix(row ^ (stream & MASK))
    position = _mix((torch.arange(count, dtype=torch.int64) + 0x9E3779B9) & MASK)
    bits = _mix(row.unsqueeze(1) ^ position.unsqueeze(0))
    return bits.to(torch.float64) / 2.0**32

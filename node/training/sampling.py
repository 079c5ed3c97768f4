"""Counter-based minibatch sampling: a site's batches are a pure function of where it is.

Row k of a trainer (site ``first_row + k`` of the consortium) draws its d-th batch from
uniforms that depend only on (public seed, site, d): a node training its one row and the
simulator training every site's row at once draw the same batches, and the simulator
does it in a few vectorised integer operations for any number of sites (one generator
per row cost ~0.07 ms a row per step, 70 ms a step at 1,000 sites; this costs 1.6 ms
there, and ~13 µs for a node's batch of 16). A checkpoint holds the draw counter, not a
generator's state.

+q8's stochastic rounding draws from the same hash on its own stream (a site's rounding
in round t), for the same reasons.

The uniforms come from a 32-bit integer hash (Wellons' "lowbias32", two multiply-xorshift
rounds) applied in turn to the seed, the site, the draw and the position in the batch,
computed in int64 without overflow. This is for choosing minibatch rows, where any
well-mixed sequence will do; nothing secret is drawn here (DP's sampling and noise use
the site's secret generators, node.training.dp).
"""

from __future__ import annotations

import functools

import torch

MASK = 0xFFFFFFFF
M1, M2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers
GOLDEN = 0x9E3779B9
SMALL = 256  # up to this many values in all, each is mixed in Python ints


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for x in [0, 2³²), without an int64 overflow: c in 16-bit halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection on 32-bit values with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, M1)
    x = x ^ (x >> 15)
    x = _mul32(x, M2)
    return x ^ (x >> 16)


def _mix_int(x: int) -> int:
    """:func:`_mix` on one Python int (the same function, bit for bit)."""
    x ^= x >> 16
    x = (x * M1) & MASK
    x ^= x >> 15
    x = (x * M2) & MASK
    return x ^ (x >> 16)


def _row_key(seed: int, site: int, draw: int, stream: int) -> int:
    """A row's key, from the seed, the site, the draw and the stream (~1 µs)."""
    key = _mix_int(_mix_int((seed >> 32) & MASK) ^ (seed & MASK))
    row = _mix_int(_mix_int(key ^ _mix_int(site & MASK)) ^ (draw & MASK))
    return _mix_int(row ^ (stream & MASK)) if stream else row


def draw_seed(seed: int, site: int, draw: int, stream: int) -> int:
    """A 32-bit seed for everything a site draws in its ``draw``-th step on ``stream``
    (2: segmentation patches, 3: their augmentation), for generators that want one."""
    return _row_key(seed, site, draw, stream)


@functools.lru_cache(maxsize=64)
def _position_ints(count: int) -> tuple[int, ...]:
    return tuple(_mix_int((p + GOLDEN) & MASK) for p in range(count))


@functools.lru_cache(maxsize=64)
def _positions(count: int) -> torch.Tensor:
    """(count,) the mixed position within a batch (the same every draw; read only)."""
    return _mix((torch.arange(count, dtype=torch.int64) + GOLDEN) & MASK)


def uniforms(
    seed: int, sites: torch.Tensor, draw: int, count: int, stream: int = 0
) -> torch.Tensor:
    """(K, count) uniforms in [0, 1) for the ``draw``-th batch of each of ``sites`` (K,);
    ``stream`` keeps other uses apart (0: minibatches; 1: +q8's rounding; 2 and 3:
    :func:`draw_seed`'s)."""
    keys = [_row_key(seed, int(site), draw, stream) for site in sites.tolist()]
    if len(keys) * count <= SMALL:
        # A node's batch: a few dozen values, cheaper in Python ints than in tensor ops.
        values = [[_mix_int(key ^ p) for p in _position_ints(count)] for key in keys]
        return torch.tensor(values, dtype=torch.float64).reshape(len(keys), count) / 2.0**32
    rows = torch.tensor(keys, dtype=torch.int64)
    bits = _mix(rows.unsqueeze(1) ^ _positions(count).unsqueeze(0))
    return bits.to(torch.float64) / 2.0**32

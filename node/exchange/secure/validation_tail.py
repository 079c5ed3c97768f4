"""The validation stop under secure aggregation: the estimate rides inside the sums.

The consortium's validation stop (:mod:`node.gossip.validation_stop`) mixes each site's
estimate e_i of the pooled validation loss over W every round: e_i ← Σ_j W_ij e_j, a
neighbour not heard from counting as the site's own estimate, and a site that hears a
stopped neighbour stops. In plaintext mode every frame announces e_j or the stop. Under
secure aggregation no neighbour's own figures may reach a receiver, but what the stop
needs is a weighted *sum* of its neighbours' estimates, which is what a neighbourhood sum
already is. So every contribution carries SECURE_TAIL more values after the model's,
scaled by W_ij like them and encrypted with them:

    (e_j[0] · u, e_j[1] · u, 1)   while j mixes an estimate, else (0, 0, 0)

with e_j = (summed validation cross-entropy, rows) and u = SECURE_UNIT. The receiver
decrypts the tail of each sum it adds; their total is Σ W_ij e_j over the included
neighbours that mix an estimate and the weight of those, which is what plaintext mode
computes from the announcements of the neighbours it heard (every other neighbour counts
as the receiver's own estimate). The stop itself is not in the sums: a receipt
(:mod:`node.wire.sealed`), signed and sent to every neighbour every round, says whether
its sender has stopped, as a plaintext frame does; so a stop is always its sender's own,
one a member announces too early is refused and counted, and no sum can hide or cancel
another site's stop.

Why the unit: a receiver refuses a sum with any value beyond SUM_LIMIT (1e4) as forged;
a large site's loss sum (thousands of rows) would cross it, its thousandths do not until
about 1.4e7 held-back rows at a typical loss of 0.7 a row (3.6e5 at the largest loss a
row can have), far beyond a hospital's table.

What the sums cannot check: a contributor encrypts its own tail, so a lying member's
tail is not attributable, and within the bounds :func:`read_tail` enforces (weights
within the neighbours' total, losses and rows non-negative, at most MAX_ROW_LOSS a row)
it can claim the weight of the whole neighbourhood, where a plaintext frame carries only
its own W_ij. Either way a lie moves readings, never models (the stop's own docstring).
Not hidden either: within a window the estimates follow linear consensus over the
public W with no private input after the window's start, so a receiver that records
every round's sum can solve for each site's own (loss sum, rows) of that window — what
plaintext mode announces. One pair of numbers per site and window (the rows are a fifth
of the site's training rows), never a model update; a consortium that counts them as
private turns the stop off (``stop_patience = 0``).

Slots: a contribution's values fill CKKS ciphertexts of 4,096 slots
(:data:`node.gossip.compress.CKKS_SLOTS`), and block-k sizes a large model's blocks to
fill them exactly. Three more values would then cost a whole ciphertext more, so where
the round's slots leave fewer than three free, that many of the round's coordinates,
drawn from the public round seed, are left out of the round (:func:`model_slots`) by
the compressor itself (:class:`TailRoom`): every site compresses the rest, so they stay
in x − x̂ until a later round that keeps them, as any coordinate a round does not keep.
Each chosen coordinate waits with probability at most 3/n (n: the round's slots, ≥
4,094).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from node.gossip.compress import CKKS_SLOTS, Compressor, SharedIndexCompressor, round_generator
from node.gossip.validation_stop import Heard
from node.wire.update import Validation

SECURE_TAIL = 3
SECURE_UNIT = 1e-3
TAIL_STREAM = 3  # round_generator's purpose for the slots left out (compressors use 1, 2)
# A row's cross-entropy is at most -log(1e-12) (probabilities are floored there,
# node.gossip.validation_stop.validation_sums), so no honest loss sum is above this per row.
MAX_ROW_LOSS = 27.7
# Slack for CKKS's approximate arithmetic when reading weights back: its error at a 2^40
# scale is a few 1e-9 per value.
_SLACK = 1e-6


def _room(n: int) -> int:
    """Model values a round of ``n`` shared slots can carry beside the tail in the
    ciphertexts ``n`` values need."""
    return math.ceil(max(n, 1) / CKKS_SLOTS) * CKKS_SLOTS - SECURE_TAIL


def model_slots(indices: torch.Tensor, seed: int, round: int) -> torch.Tensor:
    """The round's shared indices that a secure contribution carries: all of them, unless
    the tail would need one more ciphertext; then SECURE_TAIL of them, drawn from the
    public round seed, wait for a later round (see the module docstring)."""
    n = len(indices)
    room = _room(n)
    if n <= room:
        return indices
    left = torch.randperm(n, generator=round_generator(seed, round, TAIL_STREAM))[: n - room]
    keep = torch.ones(n, dtype=torch.bool)
    keep[left] = False
    return indices[keep]


class TailRoom(SharedIndexCompressor):
    """A shared-index compressor whose rounds leave the tail its room: ``inner``'s slots
    less the ones :func:`model_slots` leaves out. Used as the site's compressor under
    secure aggregation, so the coordinates left out are not compressed at all that round
    (they stay in x − x̂ for a later one), and x̂, s and every neighbour's copy move
    together: left out after compression instead, they would be owed, and CHOCO's
    average drifts while a copy lags."""

    def __init__(self, inner: SharedIndexCompressor, seed: int) -> None:
        self.inner, self.seed, self.name = inner, seed, inner.name

    def indices(self, dim: int, round: int) -> torch.Tensor:
        return model_slots(self.inner.indices(dim, round), self.seed, round)

    def kept_fraction(self, dim: int) -> float:
        n = len(self.inner.indices(dim, 0))
        return self.inner.kept_fraction(dim) * min(n, _room(n)) / max(n, 1)


def with_tail_room(compressor: Compressor, secure: str, seed: int) -> Compressor:
    """The compressor a site uses in mode ``secure``: with the tail's room under secure
    aggregation (:class:`TailRoom`), as it is otherwise."""
    if secure == "off" or not isinstance(compressor, SharedIndexCompressor):
        return compressor
    return TailRoom(compressor, seed)


def tail_values(said: Validation | None) -> NDArray[np.float64]:
    """A contributor's tail before its weight: its estimate while it mixes one (None: the
    stop is off at this site; an estimate of None: it has stopped), else zeros."""
    if said is None:
        return np.zeros(SECURE_TAIL)
    stopped = said.estimate is None
    estimate = np.array([said.estimate or (0.0, 0.0)])
    row: NDArray[np.float64] = tail_batch(estimate, np.array([stopped]))[0]
    return row


def tail_batch(estimate: NDArray[np.float64], stopped: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(N, SECURE_TAIL): :func:`tail_values` of every simulated site at once."""
    out = np.zeros((len(stopped), SECURE_TAIL))
    mixing = ~stopped
    out[mixing, :2] = estimate[mixing] * SECURE_UNIT
    out[mixing, 2] = 1.0
    return out


def read_tail(total: NDArray[np.float64], neighbour_weight: float, told: bool) -> Heard | None:
    """What the decrypted tails of a round's sums (added up) say, with ``told`` (a
    neighbour's receipt said it stopped), or None where they cannot come from honest
    contributors: a weight outside [0, the neighbours' weight], a negative loss or row
    count, more loss than MAX_ROW_LOSS a row, or a value that is not finite."""
    loss, rows, weight = (float(v) for v in total)
    plausible = (
        all(math.isfinite(v) for v in (loss, rows, weight))
        and -_SLACK <= weight <= neighbour_weight + _SLACK
        and rows >= -_SLACK
        and -_SLACK <= loss <= MAX_ROW_LOSS * rows + _SLACK
    )
    if not plausible:
        return None
    if weight <= _SLACK:  # no included neighbour had an estimate
        return Heard((0.0, 0.0), 0.0, told)
    estimate = (max(loss, 0.0) / SECURE_UNIT, max(rows, 0.0) / SECURE_UNIT)
    return Heard(estimate, min(weight, neighbour_weight), told)

"""The validation stop under secure aggregation: the estimate rides inside the sums.

The consortium's validation stop (:mod:`node.gossip.validation_stop`) mixes each site's
estimate e_i of the pooled validation loss over W every round: e_i ← Σ_j W_ij e_j, a
neighbour not heard from counting as the site's own estimate. In plaintext mode every
frame announces e_j. Under secure aggregation no neighbour's own figures may reach a
receiver, but what the stop needs is a weighted *sum* of its neighbours' estimates, which
is what a neighbourhood sum already is. So every contribution carries SECURE_TAIL more
values after the model's, scaled by W_ij like them and encrypted with them:

    (e_j[0] · u, e_j[1] · u, stopped_j, has_estimate_j)

with e_j = (summed validation cross-entropy, rows), u = SECURE_UNIT, ``stopped_j`` 1 once
j has stopped training, ``has_estimate_j`` 1 while j mixes an estimate (0 once it has
stopped, or where its stop is off). The receiver decrypts the tail of each sum it adds,
and their total is exactly what the plaintext mode computes from announcements:
Σ W_ij e_j over the included neighbours with an estimate, the weight of those (every
other neighbour counts as the receiver's own estimate) and whether one of them stopped.
The receiver learns it only as a sum of at least two contributors, as for the model.
Not hidden: within a window the estimates follow linear consensus over the public W with
no private input after the window's start, so a receiver that records every round's sum
can solve for each site's own (loss sum, rows) of that window — what plaintext mode
announces. One pair of numbers per site and window, never a model update; a consortium
that counts them as private turns the stop off (``stop_patience = 0``).

Why the unit: a receiver refuses a sum with any value beyond SUM_LIMIT as forged; a
large site's loss sum (thousands of rows) would cross it, its thousandths do not
(a row's cross-entropy is at most 27.6 with probabilities floored at 1e-12).

Slots: a contribution's values fill CKKS ciphertexts of 4,096 slots
(:data:`node.gossip.compress.CKKS_SLOTS`), and block-k sizes a large model's blocks to
fill them exactly. Four more values would then cost a whole ciphertext more, so where
the round's slots leave fewer than four free, the last coordinates are left out of the
secure round (:func:`model_slots`): what a contributor owes at them stays in its
outbox's copy (:mod:`node.exchange.outbox`) and goes out the next time those slots come
up, as a missed contribution's does, and s stays exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from node.gossip.compress import CKKS_SLOTS
from node.gossip.validation_stop import Heard
from node.wire.update import Validation

SECURE_TAIL = 4
SECURE_UNIT = 1e-3
# Slack for CKKS's approximate arithmetic when reading flags and weights back: its error
# at a 2^40 scale is orders of magnitude smaller, and honest weights are ≥ 1/(degree + 1).
_SLACK = 1e-3


def model_slots(indices: torch.Tensor) -> torch.Tensor:
    """The round's shared indices that a secure contribution carries: all of them, unless
    the tail would need one more ciphertext (see the module docstring)."""
    n = len(indices)
    room = math.ceil(max(n, 1) / CKKS_SLOTS) * CKKS_SLOTS - SECURE_TAIL
    return indices if n <= room else indices[:room]


def tail_values(said: Validation | None) -> NDArray[np.float64]:
    """A contributor's tail before its weight: what it announces of the stop (None: the
    stop is off at this site, so it has no estimate)."""
    if said is None:
        return np.zeros(SECURE_TAIL)
    if said.estimate is None:
        return np.array([0.0, 0.0, 1.0, 0.0])
    total, rows = said.estimate
    return np.array([total * SECURE_UNIT, rows * SECURE_UNIT, 0.0, 1.0])


def tail_batch(estimate: NDArray[np.float64], stopped: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(N, SECURE_TAIL): :func:`tail_values` of every simulated site at once."""
    out = np.zeros((len(stopped), SECURE_TAIL))
    mixing = ~stopped
    out[mixing, :2] = estimate[mixing] * SECURE_UNIT
    out[:, 2] = stopped
    out[:, 3] = mixing
    return out


def read_tail(total: NDArray[np.float64], neighbour_weight: float) -> Heard | None:
    """What the decrypted tails of a round's sums (added up) say, or None where they
    cannot come from honest contributors: a weight or flag outside [0, the neighbours'
    weight], a negative row count, or a value that is not finite."""
    est_total, est_rows, stopped, weight = (float(v) for v in total)
    ceiling = neighbour_weight + _SLACK
    plausible = (
        all(math.isfinite(v) for v in (est_total, est_rows, stopped, weight))
        and -_SLACK <= weight <= ceiling
        and -_SLACK <= stopped <= ceiling
        and est_rows >= -_SLACK
    )
    if not plausible:
        return None
    if weight <= _SLACK:  # no included neighbour had an estimate
        return Heard((0.0, 0.0), 0.0, stopped > _SLACK)
    estimate = (est_total / SECURE_UNIT, max(est_rows, 0.0) / SECURE_UNIT)
    return Heard(estimate, min(weight, neighbour_weight), stopped > _SLACK)

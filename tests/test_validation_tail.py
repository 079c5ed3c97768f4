"""The validation stop under secure aggregation (node.exchange.secure.validation_tail): the
tails a receiver decrypts, added up, say what the plaintext announcements say; the model's
slots leave the tail room without a ciphertext more; a tail no honest neighbourhood could
send is not read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.cipher import cipher_by_name
from node.exchange.secure.validation_tail import (
    SECURE_TAIL,
    TailRoom,
    model_slots,
    read_tail,
    tail_batch,
    tail_values,
    with_tail_room,
)
from node.gossip.choco import ChocoState, add_self_contribution, compress_step, mix_step
from node.gossip.compress import CKKS_SLOTS
from node.gossip.registry import parse_compressor
from node.gossip.step_size import choose_gamma
from node.gossip.validation_stop import Heard
from node.wire.update import Validation
from sim.exchange import exchange_round
from sim.secure_network import SecureSimNetwork
from topology import build_graph, metropolis_hastings


@pytest.mark.parametrize(
    ("n", "kept"),
    [(1, 1), (1058, 1058), (4093, 4093), (4094, 4093), (4096, 4093), (8192, 8189), (10240, 10240)],
)
def test_the_tail_never_costs_a_ciphertext_more(n: int, kept: int) -> None:
    idx = torch.arange(n) * 3
    slots = model_slots(idx, 0, 5)
    assert len(slots) == kept
    assert bool(torch.isin(slots, idx).all()) and bool((slots.diff() > 0).all())
    assert math.ceil((kept + SECURE_TAIL) / CKKS_SLOTS) == math.ceil(n / CKKS_SLOTS)
    torch.testing.assert_close(model_slots(idx, 0, 5), slots)  # the same on every site


def test_every_coordinate_left_out_goes_out_in_a_later_round() -> None:
    """The coordinates left out are drawn afresh each round, so none is left out for good
    (a fixed choice, say the last ones, would never reach the sums)."""
    idx = torch.arange(CKKS_SLOTS)
    left = [set(range(CKKS_SLOTS)) - set(model_slots(idx, 7, t).tolist()) for t in range(200)]
    assert all(len(gone) == SECURE_TAIL for gone in left)
    assert all(not (a & b & c) for a, b, c in zip(left, left[1:], left[2:], strict=False))
    assert len(set().union(*left)) > 100 * SECURE_TAIL // 2


said_strategy = st.one_of(
    st.none(),  # the stop is off at this neighbour
    st.just(Validation(None)),  # it has stopped
    # An honest estimate: rows, and at most MAX_ROW_LOSS of cross-entropy a row.
    st.floats(0.0, 2000.0).flatmap(
        lambda rows: st.floats(0.0, 27.6 * rows).map(lambda loss: Validation((loss, rows)))
    ),
)


def _plaintext(
    said: Sequence[Validation | None], weights: list[float], arrived: list[bool]
) -> Heard:
    """What the plaintext mode mixes from the same announcements (node.exchange.plaintext),
    the stop aside (secure mode hears it from receipts)."""
    total, weight = np.zeros(2), 0.0
    for s, w, a in zip(said, weights, arrived, strict=True):
        if a and s is not None and s.estimate is not None:
            total += w * np.array(s.estimate)
            weight += w
    return Heard((float(total[0]), float(total[1])), weight, False)


@settings(max_examples=200, deadline=None)
@given(
    said=st.lists(said_strategy, min_size=2, max_size=8),
    data=st.data(),
)
def test_summed_tails_say_what_the_announcements_say(
    said: list[Validation | None], data: st.DataObject
) -> None:
    k = len(said)
    raw = data.draw(st.lists(st.floats(0.05, 1.0), min_size=k + 1, max_size=k + 1))
    weights = [w / sum(raw) for w in raw[1:]]  # raw[0] is the receiver's own share
    arrived = data.draw(st.lists(st.booleans(), min_size=k, max_size=k))
    total = sum(
        (w * tail_values(s) for s, w, a in zip(said, weights, arrived, strict=True) if a),
        np.zeros(SECURE_TAIL),
    )
    heard = read_tail(total, sum(weights), told=False)
    expected = _plaintext(said, weights, arrived)
    assert heard is not None and not heard.told
    assert heard.weight == pytest.approx(expected.weight, abs=1e-9)
    assert heard.total == pytest.approx(expected.total, rel=1e-9, abs=1e-6)
    own = torch.tensor([7.0, 11.0], dtype=torch.float64)
    torch.testing.assert_close(heard.mixed(own), expected.mixed(own), rtol=1e-9, atol=1e-6)


def test_a_batch_of_tails_is_each_sites_tail() -> None:
    estimate = np.array([[3.0, 10.0], [4.0, 12.0], [0.5, 2.0]])
    stopped = np.array([False, True, False])
    rows = [
        tail_values(Validation(None) if s else Validation(tuple(e)))
        for e, s in zip(estimate, stopped, strict=True)
    ]
    np.testing.assert_array_equal(tail_batch(estimate, stopped), np.stack(rows))


def test_ckks_sums_of_tails_read_back_to_the_plaintext_mix() -> None:
    """Through real ciphertexts (CKKS is approximate: a few 1e-9 per value)."""
    cipher = cipher_by_name("ckks")
    secret = cipher.generate()
    public = cipher.public_key(secret.public.data)
    said = [Validation((41.7, 60.0)), Validation(None), Validation((3.2, 5.0))]
    weights = [0.25, 0.25, 0.2]
    parts = [cipher.encrypt(w * tail_values(s), public) for s, w in zip(said, weights, strict=True)]
    total = cipher.decrypt(cipher.add(parts, public), secret)
    heard = read_tail(total, sum(weights), told=True)
    expected = _plaintext(said, weights, [True] * 3)
    assert heard is not None and heard.told
    assert heard.weight == pytest.approx(expected.weight, abs=1e-6)
    assert heard.total == pytest.approx(expected.total, rel=1e-5)


@pytest.mark.parametrize(
    "tail",
    [
        [0.0, 0.0, 0.9],  # more weight than the neighbours have
        [0.0, 0.0, -0.2],  # negative weight
        [1.0, -0.5, 0.3],  # negative rows
        [-1.0, 0.5, 0.3],  # a negative loss, which would read as an improvement
        [20.0, 0.5, 0.3],  # more loss than any row can have
        [math.nan, 1.0, 0.3],
        [1.0, 1.0, math.inf],
    ],
)
def test_a_tail_no_honest_neighbourhood_sends_is_not_read(tail: list[float]) -> None:
    assert read_tail(np.array(tail), 0.5, told=False) is None


def test_secure_mixing_reaches_every_coordinate_when_the_tail_takes_room() -> None:
    """Four sites on a ring mix 8,192-value models under secure aggregation with whole
    4,096-blocks, so every round fills its ciphertext and three coordinates wait: every
    coordinate still reaches consensus (a coordinate never sent would keep its spread),
    on the exact average (a coordinate left out after compression would be owed, and
    CHOCO's average drifts while a copy lags)."""
    n, dim = 4, 2 * CKKS_SLOTS
    w = metropolis_hastings(build_graph("ring", n))
    x0 = torch.randn(n, dim, dtype=torch.float32)
    state = ChocoState.start(x0.clone(), x0[0].clone())
    net = SecureSimNetwork(w, None, cipher_by_name("plain"), x0[0], seed=3)
    comp = with_tail_room(parse_compressor(f"block-k:0.5:{CKKS_SLOTS}", seed=3), "plain", 3)
    assert len(cast(TailRoom, comp).indices(dim, 0)) == CKKS_SLOTS - SECURE_TAIL
    gamma = choose_gamma(w, 0.5).gamma
    up = np.ones(n, dtype=bool)
    spread0 = (x0 - x0.mean(0)).abs().max(0).values
    for t in range(300):
        q = compress_step(state, comp, t)
        add_self_contribution(state, q, net.self_weight.float())
        exchange_round(net, t, q, state, up, up)
        mix_step(state, gamma)
    spread = (state.x - state.x.mean(0)).abs().max(0).values
    assert float((spread / spread0).max()) < 1e-3  # every coordinate, not just most
    torch.testing.assert_close(state.x.mean(0), x0.mean(0), rtol=0, atol=1e-4)

"""The audit benchmark's within-run comparison: which rounds count as kept or silent."""

from __future__ import annotations

import pytest

from benchmarks.audit import BLOCK, block_pairs, cpu_by_round, kept, run_interval


def test_blocks_alternate_from_the_first_one_chosen() -> None:
    assert [kept(t, True) for t in (0, BLOCK - 1, BLOCK, 2 * BLOCK)] == [True, True, False, True]
    assert [kept(t, False) for t in (0, BLOCK, 2 * BLOCK)] == [False, True, False]


@pytest.mark.parametrize("first_on", [True, False])
def test_block_pairs_compare_kept_with_silent_leaving_out_warm_up_and_spill(
    first_on: bool,
) -> None:
    """A log that costs 1 a round shows as 1 in every pair, whichever block comes first;
    the first pair (warm-up) and each block's first round (spill) are not counted."""
    rounds = 6 * BLOCK
    latency = {t: [10.0 + kept(t, first_on)] for t in range(rounds)}
    for t in range(0, rounds, BLOCK):
        latency[t] = [1000.0]  # each block's first round: left out
    latency[1] = [1000.0]  # the warm-up pair: left out
    pairs = block_pairs(latency, first_on)
    assert pairs == [(11.0, 10.0), (11.0, 10.0)]


def test_cpu_by_round_is_the_clock_from_one_round_end_to_the_next() -> None:
    notes = [(1, 0.5), (2, 0.75), (3, 1.5), (5, 2.0)]  # round 4 missing: no interval
    assert cpu_by_round(notes) == {1: [0.25], 2: [0.75]}


def test_the_interval_over_runs_takes_each_run_as_one_value() -> None:
    """Three runs' estimates 1, 2, 3: mean 2, half-width t(0.975, 2) · 1/√3 = 2.48; a run's
    many block pairs do not narrow it."""
    mean, lo, hi = run_interval([0.01, 0.02, 0.03])
    assert mean == pytest.approx(0.02)
    assert hi - mean == pytest.approx(mean - lo)
    assert hi - mean == pytest.approx(0.0248414, rel=1e-4)

"""The convergence bench's DP rows: seeds averaged, each beside its own non-private twin."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.convergence import (
    CENTRAL_SEEDS,
    DP_SEED_ROUNDS,
    DP_SEEDS,
    dp_summary,
    run_task,
    summarise,
    tasks,
)


def _cell(model: str, rounds: int, dp: bool, seed: int, acc: float) -> dict[str, Any]:
    return {
        "section": "dp",
        "dataset": "breast-cancer",
        "model": model,
        "topology": "ring",
        "compressor": "block-k:0.1",
        "rounds": rounds,
        "dp": dp,
        "seed": seed,
        "accuracy_mean": acc,
        "accuracy_min": acc - 0.1,
        "eps_spent": 2.9 + seed / 100,
        "consensus_max": 1.0 + seed,
        "consensus_end": 0.1 * (1 + seed),
    }


def test_dp_rows_average_seeds_against_the_twin_on_the_same_seeds() -> None:
    cells = [
        _cell("mlp:32", 200, True, 0, 0.90),
        _cell("mlp:32", 200, True, 1, 0.80),
        _cell("mlp:32", 200, False, 0, 0.95),
        _cell("mlp:32", 200, False, 1, 0.97),
        _cell("logistic", 200, True, 0, 0.93),  # no non-private twin: no row
        {**_cell("mlp:32", 200, True, 0, 0.1), "section": "matrix"},  # another section
    ]
    (row,) = dp_summary(cells)
    assert row["model"] == "mlp:32" and row["seeds"] == 2
    assert row["accuracy_mean"] == pytest.approx(0.85)
    assert row["accuracy_sd"] == pytest.approx(0.05)
    assert row["nonprivate"] == pytest.approx(0.96)
    assert row["gap"] == pytest.approx(0.11)
    assert row["consensus_max"] == pytest.approx(2.0) and row["eps_spent"] == pytest.approx(2.91)


def test_short_dp_horizons_run_every_seed_private_and_not() -> None:
    dp = [t for t in tasks(quick=False) if t["section"] == "dp"]
    for rounds in {t["rounds"] for t in dp}:
        seeds = {(t["seed"], t["dp"]) for t in dp if t["rounds"] == rounds}
        wanted = DP_SEEDS if rounds <= DP_SEED_ROUNDS else DP_SEEDS[:1]
        assert seeds == {(s, p) for s in wanted for p in (True, False)}


def test_the_central_reference_reports_its_spread_over_seeds_on_the_same_split() -> None:
    """The matrix's central (seed 0) is one draw: the references also train it with the
    other seeds, and the first of them is the reference itself."""
    task = {
        "dataset": "ncctg-lung",
        "topology": "ring",
        "rounds": 50,
        "method": "references",
        "section": "references",
        "dp": False,
        "compressor": None,
    }
    done = run_task(task)
    assert "error" not in done, done.get("error")
    seeds = done["central_by_seed"]
    central = summarise([done])["references"]["ncctg-lung"]["central"]
    assert len(seeds) == len(CENTRAL_SEEDS) and all(0.0 <= a <= 1.0 for a in seeds)
    assert seeds[0] == central["accuracy_mean"] and central["accuracy_by_seed"] == seeds


def test_late_drop_is_a_fall_from_the_best_so_far_not_a_curve_still_rising() -> None:
    from sim.results import late_drops

    rounds = list(range(10, 110, 10))
    rising = [0.60, 0.70, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96]
    assert late_drops(rounds, rising) == pytest.approx({"late_drop": 0.0, "below_best": 0.06})
    # peaked at round 40, fell in the second half: both measures see the fall
    fell = [0.60, 0.80, 0.90, 0.97, 0.96, 0.95, 0.91, 0.93, 0.94, 0.94]
    assert late_drops(rounds, fell) == pytest.approx({"late_drop": 0.06, "below_best": 0.06})
    # a dip that recovers still counts: the guard is about never falling, not the end
    dip = [0.60, 0.80, 0.90, 0.92, 0.93, 0.95, 0.80, 0.96, 0.97, 0.97]
    assert late_drops(rounds, dip)["late_drop"] == pytest.approx(0.15)
    assert late_drops([5], [0.7]) == {"late_drop": 0.0, "below_best": 0.0}

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import main

BAD = [
    (["--topology", "hypercube"], "unknown topology"),
    (["--compressor", "zip:0.1"], "unknown compressor"),
    (["--compressor", "top-k:2"], "fraction must be in (0, 1]"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--methods", "central,magic"], "unknown method"),
    (["--topology", "erdos-renyi:0.01", "--nodes", "30"], "disconnected"),
    (["--kill", "3@x"], "bad --kill"),
    (["--gamma", "1.5"], "γ must be 'auto' or a number in (0, 1]"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_input_one_line_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sim", "--rounds", "1", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_subprocess_reports_csv_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "sim", "--dataset", f"csv:{path}", "--target", "zzz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("murmur: error: --target 'zzz' is not a column")


def test_sim_writes_summary_and_plots(tmp_path: Path) -> None:
    code = main(
        [
            "sim",
            "--nodes",
            "6",
            "--rounds",
            "8",
            "--alpha",
            "1.0",
            "--compressor",
            "block-k:0.2:32",
            "--out",
            str(tmp_path),
            "--drop",
            "0.2",
            "--kill",
            "2@2:5",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {
        "central",
        "pooled-logreg",
        "majority",
        "local",
        "fedavg",
        "dpsgd",
        "murmur",
    }
    for key in (
        "accuracy_mean",
        "accuracy_min",
        "auc_mean",
        "bytes_per_node",
        "rounds",
        "wall_s",
        "rounds_to_target",
        "bytes_to_target",
    ):
        assert key in summary["methods"]["murmur"]
    assert summary["methods"]["murmur"]["frames_missed"] > 0
    assert (
        summary["methods"]["murmur"]["bytes_per_node"]
        < summary["methods"]["dpsgd"]["bytes_per_node"]
    )
    for png in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "consensus_vs_round.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_sim_with_dp_records_the_budget_spent(tmp_path: Path) -> None:
    code = main(
        [
            "sim",
            "--nodes",
            "4",
            "--rounds",
            "6",
            "--methods",
            "central,murmur",
            "--dp",
            "epsilon=2,delta=1e-3,rounds=3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["dp"]["rounds"] == 3 and summary["config"]["dp"]["epsilon"] == 2
    for method in ("central", "murmur"):
        assert 1.9 <= summary["methods"][method]["eps_spent"] <= 2.0
    assert summary["methods"]["murmur"]["dp_sites_spent"] == 4


def test_dp_sweep_writes_rows_and_a_plot(tmp_path: Path) -> None:
    code = main(
        [
            "sim",
            "--nodes",
            "4",
            "--rounds",
            "5",
            "--dp",
            "epsilon=3,delta=1e-3,rounds=2",
            "--dp-sweep",
            "inf,2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    sweep = json.loads((tmp_path / "dp_sweep.json").read_text())
    runs = {(r["method"], r["epsilon"]): r for r in sweep["runs"]}
    assert set(runs) == {("murmur", 2.0), ("central", 2.0), ("murmur", None), ("central", None)}
    assert runs["murmur", 2.0]["dp_rounds"] == 2 and runs["central", 2.0]["dp_rounds"] == 5
    for method in ("murmur", "central"):
        assert 1.9 <= runs[method, 2.0]["eps_spent"] <= 2.0
        assert runs[method, None]["eps_spent"] is None
    assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 1000

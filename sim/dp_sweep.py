"""``murmur sim --dp-sweep 1,3,8,inf``: the privacy–utility trade-off in one run.

For each ε the in-process simulator runs gossip (``murmur``) with DP-SGD at every site and
``central`` DP-SGD on the pooled data, both at the same (ε, δ, clip); ``inf`` runs them
without DP: the non-private references. The sites spread their budget over ``--dp``'s
``rounds``; central DP-SGD over every round, its better setting. Writes ``dp_sweep.json`` and
``accuracy_vs_epsilon.png`` (ε on a log axis, the non-private runs as dashed lines).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from node.errors import ConfigError
from node.gossip.compress import Compressor
from node.training.dp_config import DpConfig
from sim.engine import Simulation
from sim.prep import FederatedData
from sim.results import RunSpec
from topology import StaticTopology
from topology.schedule import MatchingSchedule

SWEEP_METHODS = ("murmur", "central")


def parse_epsilons(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--dp-sweep {text!r}: expected ε values like 1,3,8,inf") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--dp-sweep {text!r}: every ε must be > 0 (inf: no DP)")
    return sorted(set(values))


def sweep(
    data: FederatedData,
    topology: StaticTopology | MatchingSchedule,
    compressor: Compressor,
    spec: RunSpec,
    epsilons: list[float],
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, ε). ``central`` DP-SGD spreads its budget over every round:
    sampling 16 of its pooled records a step, it gains from
    subsampling what small sites cannot, so it is the stronger reference that way."""
    base = spec.dp or DpConfig(epsilon=1.0, delta=1e-5)
    rows: list[dict[str, Any]] = []
    for eps in epsilons:
        dp = None if math.isinf(eps) else replace(base, epsilon=eps, noise_multiplier=None)
        for method in SWEEP_METHODS:
            method_dp = dp if dp is None or method != "central" else replace(dp, rounds=spec.rounds)
            result = Simulation(data, topology, replace(spec, dp=method_dp)).run(method, compressor)
            rows.append(
                {
                    "method": method,
                    "epsilon": None if dp is None else eps,
                    "delta": None if dp is None else base.delta,
                    "dp_rounds": None if method_dp is None else method_dp.rounds,
                    "accuracy_mean": result.final.get("accuracy_mean"),
                    "accuracy_min": result.final.get("accuracy_min"),
                    "eps_spent": result.final.get("eps_spent"),
                    "wall_s": result.final.get("wall_s"),
                }
            )
            if on_row is not None:
                on_row(rows[-1])
    return rows


def run_sweep(
    args: argparse.Namespace,
    data: FederatedData,
    topology: StaticTopology | MatchingSchedule,
    compressor: Compressor,
    spec: RunSpec,
    console: Console,
) -> dict[str, Any]:
    epsilons = parse_epsilons(args.dp_sweep)
    base = spec.dp or DpConfig(epsilon=1.0, delta=1e-5)

    def show(row: dict[str, Any]) -> None:
        label = "no DP" if row["epsilon"] is None else f"ε = {row['epsilon']:g}"
        console.print(f"{row['method']:<8} {label:<10} accuracy {row['accuracy_mean']:.4f}")

    with console.status(f"{len(epsilons)} × {', '.join(SWEEP_METHODS)}"):
        rows = sweep(data, topology, compressor, spec, epsilons, show)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "dataset": args.dataset,
        "nodes": len(data.train),
        "topology": args.topology,
        "compressor": args.compressor,
        "rounds": args.rounds,
        "delta": base.delta,
        "clip": base.clip,
        "dp_rounds": base.rounds,
        "weight": base.weight,
        "runs": rows,
    }
    path = out / "dp_sweep.json"
    path.write_text(json.dumps(summary, indent=2))
    figure = plot_sweep(out, rows)
    table = Table(title=f"accuracy vs ε (per site; δ = {base.delta:g})")
    for col in ("method", "ε", "accuracy (mean)", "accuracy (worst site)", "ε spent"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["method"],
            "∞ (no DP)" if row["epsilon"] is None else f"{row['epsilon']:g}",
            f"{float(row['accuracy_mean'] or 0):.4f}",
            f"{float(row['accuracy_min'] or 0):.4f}",
            "-" if row["eps_spent"] is None else f"{row['eps_spent']:.3f}",
        )
    console.print(table)
    console.print(f"wrote {path} and {figure}")
    return summary


def plot_sweep(out: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for method, colour in zip(SWEEP_METHODS, ("tab:blue", "tab:orange"), strict=True):
        private = [r for r in rows if r["method"] == method and r["epsilon"] is not None]
        if private:
            ax.plot(
                [r["epsilon"] for r in private],
                [r["accuracy_mean"] for r in private],
                marker="o",
                color=colour,
                label=f"{method} with DP" if method == "murmur" else "central DP-SGD (pooled)",
            )
        for r in rows:
            if r["method"] == method and r["epsilon"] is None:
                ax.axhline(
                    r["accuracy_mean"],
                    linestyle="--",
                    color=colour,
                    label=f"{method}, no DP",
                )
    ax.set_xscale("log")
    ax.set_xlabel("ε per site (log scale)")
    ax.set_ylabel("mean site test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "accuracy_vs_epsilon.png"
    fig.savefig(path)
    plt.close(fig)
    return path

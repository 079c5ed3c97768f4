"""``make bench``: accuracy/bytes targets on Wisconsin, NCCTG lung by institution, and scale.

Writes ``benchmarks/results/foundation.json`` and ``foundation.md``. Figures are measured
in one run on this machine; ratios are taken within the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.gossip.registry import parse_compressor
from node.gossip.step_size import auto_gammas
from node.training.trainer import TrainConfig
from sim.data import load_dataset
from sim.engine import Simulation
from sim.partition import natural
from sim.prep import FederatedData, dirichlet_sites, prepare
from sim.report import with_targets
from sim.results import RunSpec
from topology import build_topology

RESULTS = Path(__file__).parent / "results"
TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16)


def wisconsin(rounds: int) -> dict[str, Any]:
    data = dirichlet_sites()
    spec = RunSpec(rounds, "mlp:32", TRAIN, None, 0, torch.device("cpu"))
    sim = Simulation(data, build_topology("ring", 16), spec)
    runs = [sim.run(m) for m in ("central", "local", "fedavg", "dpsgd")]
    for name in ("top-k:0.01", "top-k:0.1"):
        result = sim.run("murmur", parse_compressor(name))
        result.method = f"murmur {name}"
        runs.append(result)
    table_out = with_targets(runs, curves=False)
    return table_out


def gamma_sweep(rounds: int) -> list[dict[str, Any]]:
    """rounds_to_target and accuracy of top-k 1% / 10% over γ, with the auto choice marked."""
    data = dirichlet_sites()
    base = RunSpec(rounds, "mlp:32", TRAIN, None, 0, torch.device("cpu"))
    sim = Simulation(data, build_topology("ring", 16), base)
    central = sim.run("central")
    rows = []
    for name in ("top-k:0.01", "top-k:0.1"):
        comp = parse_compressor(name)
        (auto,) = auto_gammas(comp, sim.layout.dim, sim.topology.matrix(0))
        others = [g for g in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7) if abs(g - auto) > 1e-3]
        for gamma in sorted([*others, auto]):
            sim.spec = replace(base, gamma=gamma)
            run = sim.run("murmur", comp)
            run.method = f"{name} γ={gamma:g}"
            entry = with_targets([central, run])[run.method]
            rows.append(
                {
                    "compressor": name,
                    "gamma": gamma,
                    "auto": gamma == auto,
                    "accuracy_mean": entry["accuracy_mean"],
                    "accuracy_min": entry["accuracy_min"],
                    "rounds_to_target": entry["rounds_to_target"],
                }
            )
    return rows


def lung(rounds: int) -> dict[str, Any]:
    table = load_dataset("ncctg-lung")
    parts, names = natural(table.sites)
    data = prepare(table, parts, names, 0)
    spec = RunSpec(rounds, "mlp:32", TRAIN, None, 0, torch.device("cpu"))
    sim = Simulation(data, build_topology("ring", len(parts)), spec)
    runs = [sim.run(m) for m in ("central", "local", "fedavg", "dpsgd")]
    runs.append(sim.run("murmur", parse_compressor("top-k:0.1")))
    out = with_targets(runs, curves=False)
    return {"sites": names, "methods": out}


def bootstrap_data(n: int, rows_per_node: int = 32) -> FederatedData:
    """n nodes, each with rows drawn with replacement from Wisconsin (569 rows cannot be
    split 1,000 ways); only speed and memory are measured on this data."""
    table = load_dataset("breast-cancer")
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, len(table.labels), rows_per_node) for _ in range(n)]
    return prepare(table, parts, [f"node-{i}" for i in range(n)], 0)


def scale(nodes: int, rounds: int, compressor: str) -> dict[str, Any]:
    """One scale point, measured in this process: call it through ``scale_isolated``."""
    data = bootstrap_data(nodes)
    spec = RunSpec(
        rounds,
        "mlp:1024,64",
        TrainConfig(optimizer="sgd", lr=0.1, batch_size=16),
        None,
        0,
        torch.device("cpu"),
        evaluate=False,
    )
    sim = Simulation(data, build_topology("ring", nodes), spec)
    comp = parse_compressor(compressor, 0)
    began = time.perf_counter()
    result = sim.run("murmur", comp)
    elapsed = time.perf_counter() - began
    state = sim.last_state
    state_bytes = sum(t.numel() * t.element_size() for t in (state.x, state.xhat, state.s))
    return {
        "nodes": nodes,
        "parameters": sim.layout.dim,
        "compressor": compressor,
        "rounds": rounds,
        "rounds_per_s": rounds / float(result.final.get("loop_s") or elapsed),
        "state_bytes_per_node": state_bytes / nodes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def scale_isolated(nodes: int, rounds: int, compressor: str) -> dict[str, Any]:
    """Run one scale point in a fresh interpreter so its peak RSS and speed are its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--scale-one", f"{nodes},{rounds},{compressor}"],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Foundation benchmarks",
        "",
        f"Measured {report['date']} on {report['machine']}.",
        "",
    ]
    lines += [
        "## Wisconsin, 16-node ring, Dirichlet α=0.5",
        "",
        "| method | acc mean % | acc worst % | AUC | bytes/node | rounds→99% | bytes→99% |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None:
            return "—"
        return (
            f"{100 * v:.1f}"
            if pct
            else (f"{v:.3f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}")
        )

    for name, e in report["wisconsin"].items():
        lines.append(
            f"| {name} | {fmt(e['accuracy_mean'], True)} | {fmt(e['accuracy_min'], True)} | "
            f"{fmt(e['auc_mean'])} | {fmt(e['bytes_per_node'])} | {fmt(e['rounds_to_target'])} | "
            f"{fmt(e['bytes_to_target'])} |"
        )
    lines += [
        "",
        "## CHOCO step γ held fixed (Wisconsin ring; ★ = the analysed step for the k/d bound,"
        " where --gamma auto starts before top-k learns its contraction)",
        "",
        "| compressor | γ | acc mean % | acc worst % | rounds→99% |",
        "|---|---|---|---|---|",
    ]
    for e in report["gamma_sweep"]:
        star = " ★" if e["auto"] else ""
        lines.append(
            f"| {e['compressor']} | {e['gamma']:.3g}{star} | {fmt(e['accuracy_mean'], True)} | "
            f"{fmt(e['accuracy_min'], True)} | {fmt(e['rounds_to_target'])} |"
        )
    lines += [
        "",
        "## NCCTG lung, one node per institution (ring)",
        "",
        "| method | acc mean % | acc worst site % | own-site acc worst % | bytes/node |",
        "|---|---|---|---|---|",
    ]
    for name, e in report["lung"]["methods"].items():
        lines.append(
            f"| {name} | {fmt(e['accuracy_mean'], True)} | {fmt(e['accuracy_min'], True)} | "
            f"{fmt(e.get('site_accuracy_min'), True)} | {fmt(e['bytes_per_node'])} |"
        )
    lines += [
        "",
        "## Scale (in-process simulator, ring, mlp:1024,64)",
        "",
        "| nodes | params | compressor | rounds/s | state bytes/node | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["scale"]:
        lines.append(
            f"| {e['nodes']} | {e['parameters']:,} | {e['compressor']} | {e['rounds_per_s']:.2f} | "
            f"{e['state_bytes_per_node']:,.0f} | {e['peak_rss_bytes'] / 2**30:.2f} GiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--scale-rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--scale-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_one:
        nodes, rounds, compressor = args.scale_one.split(",")
        print(json.dumps(scale(int(nodes), int(rounds), compressor)))
        return
    import platform

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
    }
    print("wisconsin ...", flush=True)
    report["wisconsin"] = wisconsin(20 if args.quick else args.rounds)
    print("gamma sweep ...", flush=True)
    report["gamma_sweep"] = gamma_sweep(20 if args.quick else args.rounds)
    print("lung ...", flush=True)
    report["lung"] = lung(20 if args.quick else args.rounds)
    report["scale"] = []
    sizes = (50, 100) if args.quick else (250, 500, 1000)
    for n in sizes:
        for comp in ("block-k:0.01",) + (("top-k:0.01",) if n == sizes[-1] else ()):
            print(f"scale {n} {comp} ...", flush=True)
            report["scale"].append(scale_isolated(n, 3 if args.quick else args.scale_rounds, comp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "foundation.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "foundation.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

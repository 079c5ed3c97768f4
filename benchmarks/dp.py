"""``make bench`` (differential privacy): accuracy against ε, and DP-SGD's cost per step.

- Accuracy: Wisconsin, 16-node ring, ``block-k:0.1``, Dirichlet(0.5) label skew, 200
  rounds, δ = 1e-5, clip 1, the budget spread over the first 30 rounds and sites weighted
  by records; ε = 1, 3, 8, ∞ for gossip with DP-SGD at every site and for central DP-SGD
  on the pooled data, for the logistic and ``mlp:32`` models, over three seeds (each seed
  draws its own partition, initial model, batches and noise). Target: at ε = 3 the mean
  accuracy within 5 points of non-private gossip.
- Ablation at ε = 3: the same runs with equal site weights and/or the budget spread over
  all 200 rounds, to show what each of the two settings buys.
- Overhead: one local step of the largest site (139 records, ``mlp:32``, batch 16) with
  DP-SGD against without, timed interleaved in the same process; the ratio is the figure.

Writes ``benchmarks/results/dp.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.gossip.registry import parse_compressor
from node.training.dp.engine import DpTrainer
from node.training.dp_config import DpConfig
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, StackedData, TrainConfig
from sim.dp_sweep import sweep
from sim.engine import Simulation
from sim.prep import FederatedData, dirichlet_sites
from sim.results import RunSpec
from topology import build_topology

RESULTS = Path(__file__).parent / "results"
TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16)
ROUNDS = 200
DP = DpConfig(epsilon=3.0, delta=1e-5, clip=1.0, rounds=30, weight="records")
EPSILONS = [1.0, 3.0, 8.0, float("inf")]
MODELS = ("logistic", "mlp:32")
SEEDS = (0, 1, 2)
COMPRESSOR = "block-k:0.1"
ABLATIONS = {
    "equal weights, all 200 rounds": replace(DP, weight="equal", rounds=200),
    "records, all 200 rounds": replace(DP, rounds=200),
    "equal weights, 30 rounds": replace(DP, weight="equal"),
}


def wisconsin(seed: int) -> FederatedData:
    return dirichlet_sites("breast-cancer", 16, 0.5, seed)


def _job(model: str, seed: int) -> list[dict[str, Any]]:
    """Every run of one (model, seed): the ε sweep and the ablations."""
    torch.set_num_threads(1)
    data = wisconsin(seed)
    topology = build_topology("ring", 16, seed)
    compressor = parse_compressor(COMPRESSOR, seed, data.label_counts())
    spec = RunSpec(ROUNDS, model, TRAIN, None, seed, torch.device("cpu"), ROUNDS, dp=DP)
    rows = sweep(data, topology, compressor, spec, EPSILONS)
    for name, dp in ABLATIONS.items():
        result = Simulation(data, topology, replace(spec, dp=dp)).run("murmur", compressor)
        rows.append(
            {
                "method": f"murmur, {name}",
                "epsilon": dp.epsilon,
                "accuracy_mean": result.final["accuracy_mean"],
                "eps_spent": result.final.get("eps_spent"),
            }
        )
    for row in rows:
        row.update(model=model, seed=seed)
    return rows


def overhead(steps: int = 200, blocks: int = 5) -> dict[str, float]:
    """Seconds per local step, plain and DP-SGD, on the largest Wisconsin site."""
    data = wisconsin(0)
    part = max(data.train, key=lambda p: len(p[1]))
    model = build_model("mlp:32", data.n_features, data.n_classes)
    x0 = FlatLayout.of(model).to_vector(model).detach()

    def trainer() -> BatchedTrainer:
        stacked = StackedData.from_parts([part], torch.device("cpu"))
        return BatchedTrainer(model, x0.unsqueeze(0).clone(), stacked, TRAIN)

    plain = trainer()
    dp = replace(DP, epsilon=1e9, noise_multiplier=1.0, rounds=steps * blocks, weight="equal")
    private = DpTrainer(trainer(), [part], dp, steps * blocks, seed=0, reproducible=True)
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for _ in range(blocks):  # interleaved, so drift in machine load hits both alike
        for name, run in (("plain", plain), ("dp", private)):
            began = time.perf_counter()
            for _ in range(steps):
                run.train()
            times[name].append((time.perf_counter() - began) / steps)
    per_step = {k: statistics.median(v) for k, v in times.items()}
    return {
        "records": len(part[1]),
        "plain_s": per_step["plain"],
        "dp_s": per_step["dp"],
        "ratio": per_step["dp"] / per_step["plain"],
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of each (model, method, ε), and the target check per model."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"{row['model']}|{row['method']}|{row['epsilon']}"
        entry = table.setdefault(
            key,
            {"model": row["model"], "method": row["method"], "epsilon": row["epsilon"], "acc": []},
        )
        entry["acc"].append(row["accuracy_mean"])
    for entry in table.values():
        entry["mean"] = float(np.mean(entry["acc"]))
    targets = {}
    for model in MODELS:
        private = table[f"{model}|murmur|3.0"]["mean"]
        public = table[f"{model}|murmur|None"]["mean"]
        gap = 100 * (public - private)
        targets[model] = {"eps3": private, "no_dp": public, "gap_points": gap, "met": gap <= 5}
    return {"cells": list(table.values()), "targets": targets}


def render(report: dict[str, Any]) -> str:
    cells = {(c["model"], c["method"], c["epsilon"]): c for c in report["summary"]["cells"]}

    def pct(model: str, method: str, eps: float | None) -> str:
        cell = cells[model, method, eps]
        seeds = " / ".join(f"{100 * a:.1f}" for a in cell["acc"])
        return f"{100 * cell['mean']:.1f} ({seeds})"

    lines = [
        "# Differential privacy benchmarks",
        "",
        f"Measured {report['date']} on this machine (CPU). Wisconsin, 16-node ring, "
        f"{COMPRESSOR}, Dirichlet(0.5), {ROUNDS} rounds, δ = {DP.delta:g}, clip {DP.clip:g}; "
        f"sites spread their budget over the first {DP.rounds} rounds, weighted by records; "
        "central DP-SGD over all rounds. Accuracy % as the mean over seeds 0 / 1 / 2 "
        "(each seed's figure in brackets).",
        "",
    ]
    for model in MODELS:
        target = report["summary"]["targets"][model]
        lines += [
            f"## {model}",
            "",
            "| ε per site | murmur with DP | central DP-SGD (pooled) |",
            "|---|---|---|",
        ]
        for eps in EPSILONS:
            key = None if np.isinf(eps) else eps
            label = "∞ (no DP)" if key is None else f"{eps:g}"
            lines.append(
                f"| {label} | {pct(model, 'murmur', key)} | {pct(model, 'central', key)} |"
            )
        verdict = "MET" if target["met"] else "MISSED"
        lines += [
            "",
            f"Target, ε = 3 within 5 points of non-private gossip: {target['gap_points']:.1f} "
            f"points below: **{verdict}**.",
            "",
            "| ε = 3, murmur | accuracy % |",
            "|---|---|",
            f"| records, {DP.rounds} rounds (as above) | {pct(model, 'murmur', 3.0)} |",
        ]
        for name in ABLATIONS:
            lines.append(f"| {name} | {pct(model, f'murmur, {name}', 3.0)} |")
        lines.append("")
    o = report["overhead"]
    lines += [
        f"## DP-SGD overhead per local step (site of {o['records']} records, mlp:32, batch 16)",
        "",
        "| step | ms | ratio |",
        "|---|---|---|",
        f"| plain | {1000 * o['plain_s']:.2f} | 1 |",
        f"| DP-SGD (Opacus, Poisson sampling) | {1000 * o['dp_s']:.2f} | {o['ratio']:.1f}× |",
    ]
    return "\n".join(lines)


def main() -> None:
    began = time.perf_counter()
    jobs = [(m, s) for m in MODELS for s in SEEDS]
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_job, m, s) for m, s in jobs]
        rows = []
        for (model, seed), future in zip(jobs, futures, strict=True):
            rows += future.result()
            print(f"dp bench: {model} seed {seed} done ({time.perf_counter() - began:.0f} s)")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            "rounds": ROUNDS,
            "compressor": COMPRESSOR,
            "dp": asdict(DP),
            "seeds": list(SEEDS),
        },
        "runs": rows,
        "summary": summarise(rows),
        "overhead": overhead(),
        "wall_s": time.perf_counter() - began,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dp.json").write_text(json.dumps(report, indent=2))
    md = render(report)
    (RESULTS / "dp.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()

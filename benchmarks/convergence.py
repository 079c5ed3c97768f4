"""``make bench``: the convergence matrix — does gossip hold on every graph, compressor,
horizon and dataset?

Cells: topologies × compressors × horizons (200 and 2,000 rounds) on Wisconsin (16 sites,
Dirichlet α = 0.5) and NCCTG lung (18 real institutions), every one with ``--gamma auto``,
plus DP ε = 3 (δ = 1e-5, nothing else set) rows and a drift-control comparison (murmur,
murmur with FedProx, murmur-gt). Each cell reports mean and worst node accuracy and AUC on
the pooled held-out rows, the consensus distance after round 1, at round 50, its peak and
at the end, how far mean accuracy fell in the run's last half below the best it had
reached by then (``late_drop``; ``below_best`` against the whole run's best), and bytes to
99% of central's accuracy as real encoded frames. The references — central trained to
convergence with early stopping, pooled scikit-learn logistic regression, the majority
class, and dense D-PSGD on the same graph — come from the same split.

Writes ``benchmarks/results/convergence.{json,md}`` and ``convergence.png``; runs the cells
on two worker processes (one thread each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
TOPOLOGIES = (
    "ring",
    "torus",
    "exponential",
    "regular:4",
    "erdos-renyi:0.3",
    "watts-strogatz:4:0.2",
)
COMPRESSORS = (
    "top-k:0.01",
    "top-k:0.1",
    "rand-k:0.1",
    "block-k:0.01",
    "block-k:0.1",
    "block-k:0.1+q8",
)
HORIZONS = (200, 2000)
DATASETS = ("breast-cancer", "ncctg-lung")
DP_CELLS = (("ring", "block-k:0.1"), ("exponential", "top-k:0.1"))
DP_HORIZONS = (100, 200, 2000)
DP_MODELS = ("logistic", "mlp:32")
# One DP run is one draw of every site's noise: two draws of the same cell differ by up to
# 14 points on Wisconsin and 19 on lung (make bench, 3 seeds), far more than the 3-point
# target. Horizons up to DP_SEED_ROUNDS run DP_SEEDS seeds (private and non-private alike)
# and report the mean: with three, its standard error is still up to 5 points on the
# noisiest cells.
DP_SEEDS = (0, 1, 2)
DP_SEED_ROUNDS = 200
# Seeds the central reference is also trained with (the matrix uses the first): on a
# small table its early-stopped accuracy moves by many held-out rows from seed to seed.
CENTRAL_SEEDS = (0, 1, 2, 3, 4, 5)
DRIFT_CELLS = (("ring", "top-k:0.01"), ("exponential", "block-k:0.1"))
FEDPROX_MU = 0.1
DRIFT_LOCAL_STEPS = 5

Task = dict[str, Any]


def _simulation(task: Task) -> Any:
    import torch

    from node.training.dp_config import DpConfig
    from node.training.trainer import TrainConfig
    from sim.data import load_dataset
    from sim.engine import Simulation
    from sim.partition import dirichlet, natural
    from sim.prep import prepare
    from sim.results import RunSpec
    from topology import build_topology

    dataset, rounds = task["dataset"], task["rounds"]
    table = load_dataset(dataset)
    if table.sites is not None:
        parts, names = natural(table.sites)
    else:
        parts = dirichlet(table.labels, 16, 0.5, np.random.default_rng(0))
        names = [f"node-{i}" for i in range(16)]
    data = prepare(table, parts, names, 0)
    train = TrainConfig(
        optimizer="sgd",
        lr=0.3,
        batch_size=16,
        prox_mu=task.get("prox_mu", 0.0),
        local_steps=task.get("local_steps", 1),
    )
    spec = RunSpec(
        rounds,
        task.get("model", "mlp:32"),
        train,
        None,
        task.get("seed", 0),  # model initialisation, sampling and DP noise; data split fixed
        torch.device("cpu"),
        eval_every=5 if rounds <= 200 else 10,
        dp=DpConfig(epsilon=3.0, delta=1e-5) if task["dp"] else None,
    )
    return Simulation(data, build_topology(task["topology"], len(parts), 0), spec)


def run_task(task: Task) -> Task:
    """One cell in this worker process; a cell that fails is reported, not fatal."""
    try:
        return _run_task(task)
    except Exception as exc:  # the matrix goes on; the table names the failed cell
        return {**task, "error": f"{type(exc).__name__}: {exc}", "results": [], "seconds": 0.0}


def _run_task(task: Task) -> Task:
    """One cell in this worker process: a method on one dataset, graph, compressor, horizon."""
    import torch

    torch.set_num_threads(1)
    from node.gossip.registry import parse_compressor

    sim = _simulation(task)
    began = time.perf_counter()
    if task["method"] == "references":
        results = [sim.run("central"), *sim.references()]
        # The reference's own spread: the same split, other initialisations and batches.
        task["central_by_seed"] = [
            float(results[0].final["accuracy_mean"]),
            *(
                float(_simulation({**task, "seed": seed}).run("central").final["accuracy_mean"])
                for seed in CENTRAL_SEEDS[1:]
            ),
        ]
    else:
        spec = task["compressor"] or "identity"  # dpsgd
        compressor = parse_compressor(spec, 0, sim.data.label_counts())
        result = sim.run(task["method"], compressor)
        results = [result]
        task["kept_fraction"] = compressor.kept_fraction(sim.layout.dim)
    task["results"] = [
        {
            "method": r.method,
            "final": r.final,
            "rounds": r.rounds,
            "accuracy_mean": r.accuracy_mean,
            "bytes_per_node": r.bytes_per_node,
        }
        for r in results
    ]
    task["seconds"] = time.perf_counter() - began
    return task


def tasks(quick: bool) -> list[Task]:
    topologies = TOPOLOGIES[:2] if quick else TOPOLOGIES
    compressors = COMPRESSORS[:2] if quick else COMPRESSORS
    horizons = (50, 200) if quick else HORIZONS
    out: list[Task] = []
    base = {"dp": False, "compressor": None}
    for dataset in DATASETS:
        out.append(
            {
                **base,
                "dataset": dataset,
                "topology": "ring",
                "rounds": horizons[0],
                "method": "references",
                "section": "references",
            }
        )
        for rounds in horizons:
            for topology in topologies:
                out.append(
                    {
                        **base,
                        "dataset": dataset,
                        "topology": topology,
                        "rounds": rounds,
                        "method": "dpsgd",
                        "section": "matrix",
                    }
                )
                for compressor in compressors:
                    out.append(
                        {
                            **base,
                            "dataset": dataset,
                            "topology": topology,
                            "rounds": rounds,
                            "method": "murmur",
                            "compressor": compressor,
                            "section": "matrix",
                        }
                    )
            for topology, compressor in DRIFT_CELLS if not quick else DRIFT_CELLS[:1]:
                # FedProx acts only between a round's local steps: five of them a round.
                for method, mu in (("murmur", 0.0), ("murmur", FEDPROX_MU), ("murmur-gt", 0.0)):
                    out.append(
                        {
                            **base,
                            "dataset": dataset,
                            "topology": topology,
                            "rounds": rounds,
                            "method": method,
                            "compressor": compressor,
                            "prox_mu": mu,
                            "local_steps": DRIFT_LOCAL_STEPS,
                            "section": "drift",
                        }
                    )
        for model in DP_MODELS:
            for rounds in (50,) if quick else DP_HORIZONS:
                seeds = DP_SEEDS if rounds <= DP_SEED_ROUNDS else DP_SEEDS[:1]
                for topology, compressor in DP_CELLS[:1] if quick else DP_CELLS:
                    for dp, seed in itertools.product((True, False), seeds):
                        out.append(
                            {
                                **base,
                                "dataset": dataset,
                                "topology": topology,
                                "rounds": rounds,
                                "method": "murmur",
                                "model": model,
                                "compressor": compressor,
                                "dp": dp,
                                "seed": seed,
                                "section": "dp",
                            }
                        )
    return out


def _target_hit(rounds: list[int], acc: list[float], sent: list[float], target: float) -> Any:
    hit = next((k for k, a in enumerate(acc) if a >= target), None)
    return (None, None) if hit is None else (rounds[hit], sent[hit])


def summarise(done: list[Task]) -> dict[str, Any]:
    refs = {
        t["dataset"]: {r["method"]: r["final"] for r in t["results"]}
        for t in done
        if t["method"] == "references"
    }
    for t in done:
        if t["method"] == "references" and "central_by_seed" in t:
            refs[t["dataset"]]["central"]["accuracy_by_seed"] = t["central_by_seed"]
    cells = []
    keys = ("dataset", "topology", "compressor", "rounds", "method", "error")
    errors = [{k: t.get(k) for k in keys} for t in done if "error" in t]
    for t in done:
        if t["method"] == "references" or "error" in t:
            continue
        (r,) = t["results"]
        central = refs[t["dataset"]]["central"]
        target = 0.99 * float(central["accuracy_mean"])
        hit_round, hit_bytes = _target_hit(
            r["rounds"], r["accuracy_mean"], r["bytes_per_node"], target
        )
        final = r["final"]
        cells.append(
            {
                "dataset": t["dataset"],
                "topology": t["topology"],
                "compressor": t["compressor"],
                "rounds": t["rounds"],
                "method": t["method"],
                "dp": t["dp"],
                "seed": t.get("seed", 0),
                "model": t.get("model", "mlp:32"),
                "section": t["section"],
                "prox_mu": t.get("prox_mu", 0.0),
                "kept_fraction": t.get("kept_fraction"),
                "accuracy_mean": final["accuracy_mean"],
                "accuracy_min": final["accuracy_min"],
                "auc_mean": final["auc_mean"],
                "bytes_per_node": final["bytes_per_node"],
                "consensus_first": final.get("consensus_first"),
                "consensus_50": final.get("consensus_50"),
                "consensus_max": final.get("consensus_max"),
                "consensus_end": final.get("consensus_end"),
                "late_drop": final.get("late_drop"),
                "below_best": final.get("below_best"),
                "step_backoffs": final.get("step_backoffs"),
                "gamma_min": final.get("gamma_min"),
                "gamma_max": final.get("gamma_max"),
                "rounds_to_target": hit_round,
                "bytes_to_target": hit_bytes,
                "seconds": t["seconds"],
                "eps_spent": final.get("eps_spent"),
                "stop_first": final.get("stop_first"),
                "stop_last": final.get("stop_last"),
            }
        )
    for c in cells:
        dense = next(
            (
                d
                for d in cells
                if d["method"] == "dpsgd"
                and d["section"] == "matrix"
                and d["dataset"] == c["dataset"]
                and d["topology"] == c["topology"]
                and d["rounds"] == c["rounds"]
            ),
            None,
        )
        c["dpsgd_bytes_to_target"] = None if dense is None else dense["bytes_to_target"]
        central = refs[c["dataset"]]["central"]
        c["auc_gap"] = None if c["auc_mean"] is None else central["auc_mean"] - c["auc_mean"]
        c["worst_gap"] = central["accuracy_mean"] - c["accuracy_min"]
        c["stable"] = bool(
            c["consensus_end"] is not None
            and c["consensus_end"] <= c["consensus_50"]
            and c["consensus_max"] <= 10 * c["consensus_first"]
            and (c["late_drop"] or 0.0) <= 0.01
        )
    return {"references": refs, "cells": cells, "errors": errors}


DP_GAP = 0.03  # the target: within 3 points of non-private


def dp_summary(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DP rows: private cells averaged over their seeds, each beside the mean of its
    non-private twin over the same seeds."""
    keys = ("dataset", "model", "topology", "compressor", "rounds")
    groups: dict[tuple[Any, ...], dict[bool, list[dict[str, Any]]]] = {}
    for c in cells:
        if c["section"] == "dp":
            groups.setdefault(tuple(c[k] for k in keys), {True: [], False: []})[c["dp"]].append(c)
    rows = []
    for key, runs in groups.items():
        private, public = runs[True], runs[False]
        if not private or not public:
            continue
        acc = np.array([c["accuracy_mean"] for c in private])
        twin = float(np.mean([c["accuracy_mean"] for c in public]))
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "seeds": len(private),
                "accuracy_mean": float(acc.mean()),
                "accuracy_sd": float(acc.std()),
                "accuracy_min": float(np.mean([c["accuracy_min"] for c in private])),
                "nonprivate": twin,
                "gap": twin - float(acc.mean()),
                "eps_spent": max(c["eps_spent"] or 0.0 for c in private),
                "consensus_max": max(c["consensus_max"] or 0.0 for c in private),
                "consensus_end": max(c["consensus_end"] or 0.0 for c in private),
            }
        )
    rows.sort(key=lambda r: (-r["rounds"], r["dataset"], r["model"], r["topology"]))
    return rows


def _f(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if pct:
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _bytes(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v / 1000:,.1f} KB" if v < 1e6 else f"{v / 1e6:,.2f} MB"


def derive(report: dict[str, Any]) -> None:
    """What the JSON, table and heatmap show beyond the cells: the DP rows, then the
    target checks (which count them); once, for a run and for ``--render`` alike."""
    report["dp"] = dp_summary(report["cells"])
    report["checks"] = checks(report)


def checks(report: dict[str, Any]) -> dict[str, Any]:
    cells = [c for c in report["cells"] if c["section"] == "matrix" and c["method"] == "murmur"]
    long = [c for c in cells if c["rounds"] == max(x["rounds"] for x in cells)]
    ratio_cells = [c for c in long if c["compressor"] in ("top-k:0.01", "block-k:0.01")]
    ratios = [
        c["dpsgd_bytes_to_target"] / c["bytes_to_target"]
        for c in ratio_cells
        if c["bytes_to_target"] and c["dpsgd_bytes_to_target"]
    ]
    dense = [c for c in report["cells"] if c["section"] == "matrix" and c["method"] == "dpsgd"]
    dp_short = [r for r in report["dp"] if r["rounds"] <= DP_SEED_ROUNDS]
    return {
        "dp_cells": len(dp_short),
        "dp_within_3pt": sum(r["gap"] <= DP_GAP for r in dp_short),
        "cells": len(cells),
        "stable": sum(c["stable"] for c in cells),
        "end_le_r50": sum(c["consensus_end"] <= c["consensus_50"] for c in cells),
        "peak_le_10x_r1": sum(c["consensus_max"] <= 10 * c["consensus_first"] for c in cells),
        "late_drop_le_1pt": sum((c["late_drop"] or 0.0) <= 0.01 for c in cells),
        "with_backoffs": sum(bool(c["step_backoffs"]) for c in cells),
        "dense_cells": len(dense),
        "dense_peak_le_10x_r1": sum(c["consensus_max"] <= 10 * c["consensus_first"] for c in dense),
        "dense_late_drop_le_1pt": sum((c["late_drop"] or 0.0) <= 0.01 for c in dense),
        "auc_within_0.01_long": sum(
            c["auc_gap"] is not None and c["auc_gap"] <= 0.01 for c in long
        ),
        "worst_within_2pt_long": sum(c["worst_gap"] <= 0.02 for c in long),
        "long_cells": len(long),
        "bytes_ratio_cells": len(ratio_cells),
        "bytes_ratio_reached": len(ratios),
        "bytes_ratio_min": min(ratios) if ratios else None,
        "bytes_ratio_median": float(np.median(ratios)) if ratios else None,
        "bytes_ratio_ge_10": sum(r >= 10 for r in ratios),
    }


def _stopped(cell: dict[str, Any]) -> str:
    """The rounds the sites stopped training (node.gossip.validation_stop), or —."""
    first, last = cell.get("stop_first"), cell.get("stop_last")
    if first is None:
        return "—"
    return f"{first}" if first == last else f"{first}–{last}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Convergence matrix",
        "",
        f"Measured {report['date']} on {report['machine']} "
        f"in {report['wall_s']:.0f} s. `--gamma auto` everywhere; model mlp:32, SGD lr 0.3, "
        "batch 16, one local step a round, cosine schedule over the horizon; gossip methods "
        "hold back 20% of each site's rows and stop training (mixing goes on) 50 rounds "
        "after the consortium's tracked validation loss last improved (the stopped "
        "column: rounds the first and last site stopped; docs/gossip.md).",
        "",
    ]
    lines += [
        "## References (pooled held-out rows)",
        "",
        "| dataset | method | acc % | AUC | note |",
        "|---|---|---|---|---|",
    ]
    for ds, refs in report["references"].items():
        for name, r in refs.items():
            note = ""
            if name == "central":
                note = f"early-stopped: best epoch {r.get('best_epoch')} of {r.get('epochs')}"
                seeds = r.get("accuracy_by_seed")
                if seeds:
                    note += (
                        f"; seeds {CENTRAL_SEEDS[0]}–{CENTRAL_SEEDS[-1]} (same split): "
                        f"{100 * min(seeds):.1f}–{100 * max(seeds):.1f} %, "
                        f"mean {100 * sum(seeds) / len(seeds):.1f}"
                    )
            lines.append(
                f"| {ds} | {name} | {_f(r['accuracy_mean'], True)} | {_f(r['auc_mean'])} | {note} |"
            )
    ck = report["checks"]
    lines += [
        "",
        "## Targets",
        "",
        f"- stable (consensus end ≤ round 50, peak ≤ 10× round 1, late drop ≤ 1 pt): "
        f"**{ck['stable']} / {ck['cells']}** cells. Apart: consensus at the end ≤ at round 50 in "
        f"{ck['end_le_r50']}; peak ≤ 10× round 1 in {ck['peak_le_10x_r1']} (dense D-PSGD, "
        f"γ = 1: {ck['dense_peak_le_10x_r1']} / {ck['dense_cells']}: models start equal and "
        "training pulls them apart until mixing balances it); late drop (the most mean accuracy "
        "fell in the last half below the best it had reached by then) ≤ 1 point in "
        f"{ck['late_drop_le_1pt']} (dense: {ck['dense_late_drop_le_1pt']} / "
        f"{ck['dense_cells']}; one held-out row is 0.9 points on Wisconsin, 2.8 on lung); "
        f"cells where the step guard backed off: {ck['with_backoffs']}",
        f"- at {max(HORIZONS)} rounds, mean AUC within 0.01 of central: "
        f"**{ck['auc_within_0.01_long']} / {ck['long_cells']}**; worst node within 2 points "
        f"of central: **{ck['worst_within_2pt_long']} / {ck['long_cells']}**",
        f"- bytes to 99% of central, top-k:0.01 and block-k:0.01 vs dpsgd: reached in "
        f"{ck['bytes_ratio_reached']} / {ck['bytes_ratio_cells']} cells; ratio ≥ 10× in "
        f"{ck['bytes_ratio_ge_10']}; min {_f(ck['bytes_ratio_min'])}×, median "
        f"{_f(ck['bytes_ratio_median'])}×",
        f"- DP ε = 3 up to {DP_SEED_ROUNDS} rounds, defaults only, mean of {len(DP_SEEDS)} seeds "
        f"within 3 points of non-private: **{ck['dp_within_3pt']} / {ck['dp_cells']}**",
        "",
    ]
    for e in report.get("errors", []):
        lines.append(f"- FAILED cell {e}")
    cells = report["cells"]
    for ds in DATASETS:
        for rounds in sorted(
            {c["rounds"] for c in cells if c["dataset"] == ds and c["section"] == "matrix"}
        ):
            rows = [
                c
                for c in cells
                if c["dataset"] == ds and c["rounds"] == rounds and c["section"] == "matrix"
            ]
            if not rows:
                continue
            lines += [
                f"## {ds}, {rounds} rounds",
                "",
                "| topology | compressor | kept | acc mean / worst % | AUC (gap) | "
                "consensus r1 · r50 · max · end | late drop | γ | stopped | "
                "bytes→99% (dpsgd ÷) | ok |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for c in rows:
                comp = c["compressor"] or "dpsgd (identity)"
                ratio = (
                    c["dpsgd_bytes_to_target"] / c["bytes_to_target"]
                    if c["bytes_to_target"] and c["dpsgd_bytes_to_target"]
                    else None
                )
                gamma = (
                    "1"
                    if c["method"] == "dpsgd"
                    else f"{_f(c['gamma_min'], digits=2)}–{_f(c['gamma_max'], digits=2)}"
                    + (f" ({c['step_backoffs']} back-offs)" if c["step_backoffs"] else "")
                )
                lines.append(
                    f"| {c['topology']} | {comp} | {_f(c['kept_fraction'], digits=2)} | "
                    f"{_f(c['accuracy_mean'], True)} / {_f(c['accuracy_min'], True)} | "
                    f"{_f(c['auc_mean'])} ({_f(c['auc_gap'], digits=2)}) | "
                    f"{_f(c['consensus_first'], digits=2)} · {_f(c['consensus_50'], digits=2)} · "
                    f"{_f(c['consensus_max'], digits=2)} · {_f(c['consensus_end'], digits=2)} | "
                    f"{_f(c['late_drop'], True)} | {gamma} | {_stopped(c)} | "
                    f"{_bytes(c['bytes_to_target'])}"
                    f"{'' if ratio is None else f' ({ratio:.1f}×)'} | "
                    f"{'✓' if c['stable'] else 'GROWS'} |"
                )
            lines.append("")
    dp_rows = report["dp"]
    if dp_rows:
        lines += [
            "## DP ε = 3, δ = 1e-5 (defaults only)",
            "",
            f"Mean over seeds {', '.join(map(str, DP_SEEDS))} (each a new draw of every site's "
            f"noise, initialisation and sampling; the data split is fixed) up to "
            f"{DP_SEED_ROUNDS} rounds, seed 0 beyond; ± is the spread (standard deviation) "
            "across seeds, and the non-private twin runs the same seeds. Consensus: the "
            "largest over seeds.",
            "",
            "| dataset | model | topology | compressor | rounds | seeds | acc mean ± sd / "
            "worst % | non-private % | gap | ε spent | consensus max · end | ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in dp_rows:
            lines.append(
                f"| {row['dataset']} | {row['model']} | {row['topology']} | "
                f"{row['compressor']} | {row['rounds']} | {row['seeds']} | "
                f"{_f(row['accuracy_mean'], True)} ± {_f(row['accuracy_sd'], True)} / "
                f"{_f(row['accuracy_min'], True)} | {_f(row['nonprivate'], True)} | "
                f"{_f(row['gap'], True)} | {_f(row['eps_spent'])} | "
                f"{_f(row['consensus_max'], digits=2)} · {_f(row['consensus_end'], digits=2)} | "
                f"{'✓' if row['gap'] <= DP_GAP else '✗'} |"
            )
        lines.append("")
    drift = [c for c in cells if c["section"] == "drift"]
    if drift:
        lines += [
            "## Drift control: murmur vs FedProx (μ = 0.1) vs murmur-gt",
            "",
            "| dataset | topology | compressor | rounds | murmur | + FedProx | murmur-gt |",
            "|---|---|---|---|---|---|---|",
        ]
        keys = sorted({(c["dataset"], c["topology"], c["compressor"], c["rounds"]) for c in drift})
        for ds, topo, comp, rounds in keys:

            def pick(
                method: str,
                mu: float,
                ds: str = ds,
                topo: str = topo,
                comp: str = comp,
                rounds: int = rounds,
            ) -> str:
                c = next(
                    (
                        x
                        for x in cells
                        if x["method"] == method
                        and x["prox_mu"] == mu
                        and x["section"] in ("matrix", "drift")
                        and (x["dataset"], x["topology"], x["compressor"], x["rounds"])
                        == (ds, topo, comp, rounds)
                    ),
                    None,
                )
                if c is None:
                    return "—"
                return (
                    f"{_f(c['accuracy_mean'], True)} / {_f(c['accuracy_min'], True)}, "
                    f"AUC {_f(c['auc_mean'])}"
                )

            lines.append(
                f"| {ds} | {topo} | {comp} | {rounds} | {pick('murmur', 0.0)} | "
                f"{pick('murmur', FEDPROX_MU)} | {pick('murmur-gt', 0.0)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def heatmap(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in report["cells"] if c["section"] == "matrix" and c["method"] == "murmur"]
    panels = sorted({(c["dataset"], c["rounds"]) for c in cells})
    topologies = list(dict.fromkeys(c["topology"] for c in cells))
    compressors = list(dict.fromkeys(c["compressor"] for c in cells))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 1.5, 4.4), squeeze=False, sharey=True
    )
    for ax, (ds, rounds) in zip(axes[0], panels, strict=True):
        grid = np.full((len(topologies), len(compressors)), np.nan)
        for c in cells:
            if (c["dataset"], c["rounds"]) == (ds, rounds):
                grid[topologies.index(c["topology"]), compressors.index(c["compressor"])] = (
                    100 * c["worst_gap"]
                )
        im = ax.imshow(grid, cmap="RdYlGn_r", vmin=-2, vmax=10)
        for (i, j), v in np.ndenumerate(grid):
            c = next(
                x
                for x in cells
                if (x["dataset"], x["rounds"], x["topology"], x["compressor"])
                == (ds, rounds, topologies[i], compressors[j])
            )
            growing = c["consensus_end"] > c["consensus_50"]
            ax.text(
                j,
                i,
                f"{v:.1f}" + ("\n!" if growing else ""),
                ha="center",
                va="center",
                fontsize=7,
            )
        ax.set_xticks(range(len(compressors)), compressors, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(topologies)), topologies, fontsize=7)
        ax.set_title(f"{ds}, {rounds} rounds", fontsize=9)
    fig.colorbar(
        im,
        ax=axes[0].tolist(),
        shrink=0.8,
        label="central − worst node accuracy (points)\n"
        "! = consensus higher at the end than at round 50",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few small cells, for a smoke check")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render", action="store_true", help="rewrite the table and heatmap from the JSON"
    )
    args = parser.parse_args()
    if args.render:
        report = json.loads((args.out / "convergence.json").read_text())
        derive(report)
        (args.out / "convergence.json").write_text(json.dumps(report, indent=2))
        (args.out / "convergence.md").write_text(markdown(report))
        heatmap(report, args.out / "convergence.png")
        return
    import platform

    import torch

    todo = tasks(args.quick)
    began = time.perf_counter()
    done: list[Task] = []
    # Longest first, so the two workers finish together.
    todo.sort(key=lambda t: -t["rounds"] * (3 if t["dp"] else 1))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for k, task in enumerate(pool.map(run_task, todo), start=1):
            done.append(task)
            print(
                f"[{k}/{len(todo)}] {task['dataset']} {task['topology']} {task['method']} "
                f"{task['compressor'] or ''} {task['rounds']} rounds"
                f"{' dp' if task['dp'] else ''}: {task['seconds']:.1f} s",
                flush=True,
            )
    report = summarise(done)
    report.update(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.workers} workers, torch {torch.__version__}",
        wall_s=time.perf_counter() - began,
    )
    derive(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.json").write_text(json.dumps(report, indent=2))
    (args.out / "convergence.md").write_text(markdown(report))
    heatmap(report, args.out / "convergence.png")
    print(markdown(report))


if __name__ == "__main__":
    main()

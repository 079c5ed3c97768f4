"""Results of a simulation: ``summary.json``, a terminal table, and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sim.results import MethodResult

TARGET_FRACTION = 0.99
REFERENCES = ("central", "pooled-logreg", "majority", "empty")  # pooled: no rounds, no bytes
TABULAR_COLUMNS = [
    ("acc mean %", "accuracy_mean", "pct"),
    ("acc worst %", "accuracy_min", "pct"),
    ("AUC mean", "auc_mean", "auc"),
]
# Segmentation (sim.segmentation): each site's model on its own held-out scans.
# (short header, long header, summary key): the terminal table uses the short ones.
DICE_COLUMNS = [
    ("Dice", "Dice mean", "dice_mean"),
    ("worst", "worst site", "dice_min"),
    ("small", "smallest site", "dice_smallest_site"),
    *((r.upper(), r.upper(), f"dice_{r}") for r in ("wt", "tc", "et")),
]
SEGMENTATION_COLUMNS = [
    *((short, key, "dice") for short, _, key in DICE_COLUMNS),
    ("HD95 mm", "hd95", "hd95"),
]


def with_targets(results: list[MethodResult], curves: bool = True) -> dict[str, dict[str, Any]]:
    """Per-method final figures plus rounds/bytes to 99% of ``central``'s accuracy, and
    each method's curves unless ``curves`` is False (benchmark tables keep finals only)."""
    central = next((r for r in results if r.method == "central"), None)
    target = (
        None if central is None else TARGET_FRACTION * float(central.final["accuracy_mean"] or 0.0)
    )
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        entry: dict[str, Any] = dict(result.final)
        hit = (
            None
            if target is None or result.method in REFERENCES
            else next((k for k, acc in enumerate(result.accuracy_mean) if acc >= target), None)
        )
        entry["target_accuracy"] = target
        entry["rounds_to_target"] = None if hit is None else result.rounds[hit]
        entry["bytes_to_target"] = None if hit is None else result.bytes_per_node[hit]
        if curves:
            entry["curve"] = {
                "round": result.rounds,
                "accuracy_mean": result.accuracy_mean,
                "accuracy_min": result.accuracy_min,
                "bytes_per_node": result.bytes_per_node,
                "consensus_distance": result.consensus,
            }
        out[result.method] = entry
    return out


def write_summary(
    out_dir: Path, config: dict[str, Any], methods: dict[str, dict[str, Any]]
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"config": config, "methods": methods}, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "bytes":
        return _human_bytes(float(value))
    if kind == "s":
        return f"{value:.1f}"
    return str(value)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def print_table(methods: dict[str, dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    segmentation = is_segmentation(methods)
    table = Table(
        title="Murmur simulation — Dice of each site's model on its own held-out scans"
        if segmentation
        else "Murmur simulation — accuracy of every node's model on held-out data"
    )
    columns = [
        ("method", "", "left"),
        *(SEGMENTATION_COLUMNS if segmentation else TABULAR_COLUMNS),
        ("sent/node", "bytes_per_node", "bytes"),
        ("rounds→99%", "rounds_to_target", "int"),
        ("bytes→99%", "bytes_to_target", "bytes"),
        ("wall s", "wall_s", "s"),
    ]
    for header, _, _ in columns:
        if header == "method":
            table.add_column(header, justify="left", no_wrap=True)
        else:
            table.add_column(header, justify="right")
    for name, entry in methods.items():
        cells = [name]
        for _, key, kind in columns[1:]:
            value = entry.get(key)
            if kind == "hd95":
                # real nodes report one score (mean Dice), not the per-region figures
                parts = [entry.get(f"hd95_{r}") for r in ("wt", "tc", "et")]
                known = [float(v) for v in parts if v is not None]
                cells.append(f"{sum(known) / 3:.1f}" if len(known) == 3 else "—")
            else:
                cells.append(
                    f"{value:.3f}"
                    if kind in ("auc", "dice") and value is not None
                    else fmt(value, kind)
                )
        table.add_row(*cells)
    console.print(table)
    target = next(iter(methods.values())).get("target_accuracy")
    if segmentation:
        console.print(
            "Dice: mean of WT, TC and ET, averaged over sites (worst: the worst site; "
            "small: the site with the fewest scans); HD95: mean of the three regions' means"
        )
    if target is not None and segmentation:
        console.print(
            f"target = 99% of central's mean Dice = {target:.3f} (central: every site's "
            "training scans pooled, each step the consortium's patches)"
        )
    elif target is not None:
        console.print(
            f"target = 99% of central's accuracy = {100 * target:.1f}% (central: pooled, "
            "trained to convergence with early stopping)"
        )


def is_segmentation(methods: dict[str, dict[str, Any]]) -> bool:
    """Whether these are a segmentation run's results (sim.segmentation): Dice, not accuracy."""
    return any("dice_mean" in entry for entry in methods.values())


def plot(out_dir: Path, methods: dict[str, dict[str, Any]]) -> list[Path]:
    """Accuracy vs round, accuracy vs bytes sent, consensus distance vs round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    score = "mean site Dice (WT, TC, ET)" if is_segmentation(methods) else "mean node test accuracy"
    specs = [
        (
            "accuracy_vs_round.png",
            "round",
            "accuracy_mean",
            "round",
            score,
            False,
            False,
        ),
        (
            "accuracy_vs_bytes.png",
            "bytes_per_node",
            "accuracy_mean",
            "bytes sent per node",
            score,
            True,
            False,
        ),
        (
            "consensus_vs_round.png",
            "round",
            "consensus_distance",
            "round",
            "consensus distance (mean ‖x_i − x̄‖²)",
            False,
            True,
        ),
    ]
    paths = []
    for filename, xkey, ykey, xlabel, ylabel, logx, logy in specs:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for name, entry in methods.items():
            curve = entry["curve"]
            xs, ys = curve[xkey], curve[ykey]
            if len(xs) != len(ys) or not ys:  # e.g. no consensus curve from real processes
                continue
            if logx:
                pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0]
                if not pairs:
                    continue
                xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            if logy:
                pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
                if not pairs:
                    continue
                xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            ax.plot(xs, ys, label=name, linewidth=1.6)
        target = next(iter(methods.values())).get("target_accuracy")
        if ykey == "accuracy_mean" and target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="99% of central")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths

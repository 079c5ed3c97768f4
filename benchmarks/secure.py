"""``make bench`` (secure aggregation): bytes on the wire, CKKS time per round, accuracy.

- Bytes: a 16-node ring with a ~1M-parameter model, real CKKS ciphertexts through the
  in-process simulator, per node per round (contributions between sites, the aggregators'
  forwards with their signed records, receipts) against dense float32 gossip.
- Time: one site's CKKS work in a round of a 1M-parameter model at ``block-k:0.1`` on a
  ring (encrypt its two contributions, aggregate one receiver's sum, decrypt its own),
  against the same site's local training.
- Accuracy: ``--secure ckks`` vs plaintext, same seed, with every default (the
  consortium's validation stop included, whose estimate travels inside the encrypted
  sums: node.exchange.secure.validation_tail): a 16-node ring on Wisconsin over 200
  rounds, and NCCTG lung's 18 institutions on the exponential graph over 2,000 rounds, where
  a run that trained to the last round would overfit.

Writes ``benchmarks/results/secure.{json,md}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crypto.ckks import CkksCipher
from node.exchange.secure.validation_tail import SECURE_TAIL, model_slots
from node.gossip.compress import BlockK
from node.gossip.registry import parse_compressor
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, StackedData, TrainConfig
from sim.engine import Simulation
from sim.prep import FederatedData, dirichlet_sites, prepare
from sim.report import with_targets
from sim.results import RunSpec
from topology import build_topology

RESULTS = Path(__file__).parent / "results"
TRAIN = TrainConfig()  # the node's defaults, the validation stop included
BIG_MODEL = "mlp:1024,960"  # 1,017,666 parameters on Wisconsin's 30 features


def wisconsin() -> FederatedData:
    return dirichlet_sites()


def _spec(
    rounds: int, model: str, secure: str, evaluate: bool = True, eval_every: int = 10
) -> RunSpec:
    return RunSpec(
        rounds,
        model,
        TRAIN,
        None,
        0,
        torch.device("cpu"),
        eval_every=eval_every,
        evaluate=evaluate,
        secure=secure,
    )


def wire_bytes(data: FederatedData, rounds: int = 2) -> dict[str, Any]:
    """Bytes per node per round on a 16-node ring with a ~1M-parameter model."""
    ring = build_topology("ring", 16)
    out: dict[str, Any] = {}
    dense = Simulation(data, ring, _spec(rounds, BIG_MODEL, "off"))
    out["parameters"] = dense.layout.dim
    result = dense.run("dpsgd")
    out["dense_float32"] = float(result.final["bytes_per_node"] or 0) / rounds
    for fraction in ("0.05", "0.01"):
        sim = Simulation(data, ring, _spec(rounds, BIG_MODEL, "ckks"))
        result = sim.run("murmur", parse_compressor(f"block-k:{fraction}"))
        sent = float(result.final["bytes_per_node"] or 0) / rounds
        kept = BlockK(float(fraction), 0).indices(sim.layout.dim, 0)
        model = len(model_slots(kept, 0, 0))
        slots = model + SECURE_TAIL
        out[f"ckks_block_k_{fraction}"] = {
            "bytes_per_node_round": sent,
            "values_per_contribution": slots,
            "model_values_per_contribution": model,
            "ciphertexts_per_contribution": -(-slots // 4096),
            "ratio_to_dense": sent / out["dense_float32"],
        }
    return out


def site_round_time(repeats: int = 3) -> dict[str, Any]:
    """One ring site's CKKS work per round for a 1M-parameter model at block-k:0.1."""
    torch.set_num_threads(1)
    cipher = CkksCipher()
    mine, left, right = (cipher.generate() for _ in range(3))
    model = build_model(BIG_MODEL, 30, 2)
    dim = FlatLayout.of(model).dim
    k = BlockK(0.1, 0).indices(dim, 0).numel()
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 1e-3, k) for _ in range(3)]
    best: dict[str, float] = {}
    for _ in range(repeats):
        times: dict[str, float] = {}
        began = time.perf_counter()
        mine_for_left = cipher.encrypt(values[0], left.public)
        cipher.encrypt(values[1], right.public).to_bytes()
        mine_for_left.to_bytes()
        times["encrypt_contributions"] = time.perf_counter() - began
        incoming = cipher.encrypt(values[2], left.public)  # a neighbour of `left`, via us
        began = time.perf_counter()
        total = cipher.add([mine_for_left, incoming], left.public)
        total.to_bytes()
        times["aggregate_one_sum"] = time.perf_counter() - began
        own = cipher.add(
            [cipher.encrypt(values[1], mine.public), cipher.encrypt(values[2], mine.public)],
            mine.public,
        )
        began = time.perf_counter()
        cipher.decrypt(own, mine)
        times["decrypt_own_sum"] = time.perf_counter() - began
        for name, seconds in times.items():
            best[name] = min(best.get(name, float("inf")), seconds)
    best["total"] = sum(best.values())
    data = wisconsin()
    training = {}
    for label, config in (
        ("1 step, batch 16", TrainConfig(optimizer="sgd", lr=0.1, batch_size=16)),
        ("10 steps, batch 64", TrainConfig(optimizer="sgd", lr=0.1, batch_size=64, local_steps=10)),
    ):
        params = FlatLayout.of(model).to_vector(model).unsqueeze(0).clone()
        trainer = BatchedTrainer(
            model, params, StackedData.from_parts([data.train[0]], torch.device("cpu")), config
        )
        trainer.train()
        training[label] = min(trainer.train().seconds for _ in range(repeats))
    return {
        "parameters": dim,
        "values_per_contribution": k,
        "ckks_seconds": best,
        "training_seconds": training,
    }


def lung() -> FederatedData:
    """NCCTG lung over its 18 real institutions, as the convergence matrix splits it."""
    from sim.data import load_dataset
    from sim.partition import natural

    table = load_dataset("ncctg-lung")
    assert table.sites is not None
    parts, names = natural(table.sites)
    return prepare(table, parts, names, 0)


def accuracy(
    data: FederatedData, rounds: int, topology: str, compressor: str, eval_every: int = 10
) -> dict[str, Any]:
    sites = len(data.train)
    graph = build_topology(topology, sites)
    runs = []
    for secure in ("off", "ckks"):
        sim = Simulation(data, graph, _spec(rounds, "mlp:32", secure, eval_every=eval_every))
        if secure == "off":
            runs.append(sim.run("central"))
        result = sim.run("murmur", parse_compressor(compressor))
        result.method = f"murmur {compressor} secure={secure}"
        runs.append(result)
    table = with_targets(runs, curves=False)
    for entry in table.values():
        entry["setting"] = f"{sites} sites, {topology}, {compressor}, {rounds} rounds"
    return table


def main() -> None:
    data = wisconsin()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "wire": wire_bytes(data),
        "site_round": site_round_time(),
        "accuracy": accuracy(data, 200, "ring", "block-k:0.05"),
        "accuracy_long": accuracy(lung(), 2000, "exponential", "block-k:0.1", eval_every=100),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secure.json").write_text(json.dumps(report, indent=2))
    md = render(report)
    (RESULTS / "secure.md").write_text(md + "\n")
    print(md)


def render(report: dict[str, Any]) -> str:
    wire, site, acc = report["wire"], report["site_round"], report["accuracy"]
    dense = wire["dense_float32"]
    lines = [
        "# Secure aggregation benchmarks",
        "",
        f"Measured {report['date']} on this machine (CPU, one core for CKKS).",
        "",
        f"## Bytes per node per round, 16-node ring, {wire['parameters']:,} parameters",
        "",
        "| mode | bytes/node/round | vs dense float32 | target |",
        "|---|---|---|---|",
        f"| dense float32 gossip | {dense / 1e6:.2f} MB | 1 | — |",
    ]
    for fraction, target in (("0.05", "≤ 1"), ("0.01", "≥ 8× fewer")):
        row = wire[f"ckks_block_k_{fraction}"]
        lines.append(
            f"| CKKS block-k:{fraction} ({row['values_per_contribution']:,} values, "
            f"{row['ciphertexts_per_contribution']} ciphertexts) | "
            f"{row['bytes_per_node_round'] / 1e6:.2f} MB | {row['ratio_to_dense']:.3f} "
            f"({1 / row['ratio_to_dense']:.1f}× fewer) | {target} |"
        )
    ckks, train = site["ckks_seconds"], site["training_seconds"]
    lines += [
        "",
        f"## One ring site's CKKS time per round, {site['parameters']:,} parameters, "
        f"block-k:0.1 ({site['values_per_contribution']:,} values per contribution)",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name.replace('_', ' ')} | {value:.3f} |" for name, value in ckks.items()),
        *(
            f"| local training, {label} | {value:.3f} (CKKS = {ckks['total'] / value:.1f}× this) |"
            for label, value in train.items()
        ),
        "",
        "## Accuracy, secure against plaintext (same seed, every default)",
        "",
        "Target: `--secure ckks` within 0.5 points of plaintext. Both run the consortium's "
        "validation stop; under CKKS its estimate travels inside the sums.",
        "",
        "| data | setting | run | acc mean % | acc worst % | stopped (first–last) | "
        "rounds to target | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gaps = []
    for label, table in (("Wisconsin", acc), ("NCCTG lung", report["accuracy_long"])):
        plain = secure = None
        for name, entry in table.items():
            if name == "central":
                continue
            stopped = (
                f"{entry.get('stop_first')}–{entry.get('stop_last')}"
                if entry.get("stopped_sites")
                else "—"
            )
            lines.append(
                f"| {label} | {entry['setting']} | {name} | {100 * entry['accuracy_mean']:.2f} "
                f"| {100 * entry['accuracy_min']:.2f} | {stopped} "
                f"| {entry['rounds_to_target']} | {entry['wall_s']:.1f} |"
            )
            if name.endswith("secure=off"):
                plain = entry["accuracy_mean"]
            else:
                secure = entry["accuracy_mean"]
        assert plain is not None and secure is not None
        gaps.append((label, 100 * (secure - plain)))
    met = all(abs(gap) <= 0.5 for _, gap in gaps)
    lines += [
        "",
        "Secure minus plaintext, mean accuracy: "
        + ", ".join(f"{label} {gap:+.2f} points" for label, gap in gaps)
        + (": **met**" if met else ": **missed**"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

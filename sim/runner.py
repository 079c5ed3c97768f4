"""``murmur sim``: build data, topology and methods from the command line, run, report."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from node.cli import Command
from node.config import TrainSection, parse_partition
from node.errors import ConfigError
from node.exchange.secure.validation_tail import with_tail_room
from node.gossip.registry import parse_compressor
from node.gossip.step_guard import step_guard
from node.training.device import pick_device
from node.training.dp_config import DpConfig
from node.training.segmentation import parse_patch
from node.training.trainer import TrainConfig
from sim import partition
from sim.consortium import ConsortiumSpec
from sim.data import load_dataset
from sim.engine import Simulation
from sim.faults import FaultConfig, parse_crash, parse_slow
from sim.flags import add_arguments
from sim.methods import METHOD_NAMES, METHODS
from sim.prep import FederatedData, prepare
from sim.report import plot, print_table, with_targets, write_summary
from sim.results import MethodResult, RunSpec
from sim.segmentation import FederatedCases, SegmentationSimulation, load_brats, node_finals
from sim.validation import stop_plan
from sim.wan_profile import WanProfile
from topology import build_topology, spectral_gap

GOSSIP_METHODS = ("dpsgd", "murmur", "murmur-gt")


def on_mri(args: argparse.Namespace) -> bool:
    """Whether this run segments tumours on BraTS folders (``--dataset brats:DIR``)."""
    return str(args.dataset).startswith("brats:")


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the flags left out with the workload's defaults: the node's ``TrainConfig``
    for tables, :func:`node.training.segmentation.train_defaults` for a U-Net on MRI."""
    defaults = TrainConfig()
    if getattr(args, "model", None) is None:
        args.model = "unet3d:8" if on_mri(args) else TrainSection.model
    if on_mri(args):
        from node.training.segmentation import train_defaults

        defaults = train_defaults(args.model)
    for name in ("optimizer", "lr", "batch_size", "stop_patience"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(defaults, name))
    if getattr(args, "eval_every", None) is None:
        args.eval_every = max(1, args.rounds // 10) if on_mri(args) else 1


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The local training the flags ask for (every TrainConfig field has a flag)."""
    resolve_defaults(args)
    return TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        prox_mu=args.prox_mu,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        time_budget_s=args.time_budget,
        lr_schedule=args.lr_schedule,
        stop_patience=args.stop_patience,
    )


def build_data(args: argparse.Namespace) -> FederatedData:
    table = load_dataset(args.dataset, args.target, args.site_column)
    rng = np.random.default_rng(args.seed)
    mode = args.split
    if mode == "auto":
        mode = (
            "natural"
            if table.sites is not None
            else ("dirichlet" if args.alpha is not None else "iid")
        )
    if mode == "natural":
        parts, names = partition.natural(table.sites)
    elif mode == "dirichlet":
        parts = partition.dirichlet(
            table.labels, args.nodes, 0.5 if args.alpha is None else args.alpha, rng
        )
        names = [f"node-{i}" for i in range(args.nodes)]
    else:
        parts = partition.iid(len(table.labels), args.nodes, rng)
        names = [f"node-{i}" for i in range(args.nodes)]
    args.partition_used = mode
    return prepare(table, parts, names, args.seed)


def split_note(split: str, used: str, sites: int, alpha: float | None) -> str | None:
    """A line saying that ``--alpha`` (and ``--nodes``) went unused: the data names its
    own sites and ``--split auto`` keeps them, where a user who passed ``--alpha`` may
    have expected a Dirichlet split."""
    if split != "auto" or used != "natural" or alpha is None:
        return None
    return (
        f"split: the data names its own sites, so --split auto runs its {sites} sites and "
        "ignores --alpha and --nodes; pass --split dirichlet to split it yourself"
    )


def run(args: argparse.Namespace, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(width=max(110, Console().width))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; "
            f"accepted: {', '.join(METHOD_NAMES)}"
        )
    resolve_defaults(args)
    if args.rounds < 1 or args.eval_every < 1:
        raise ConfigError("--rounds and --eval-every must be at least 1")
    if on_mri(args) and (args.dp_sweep or args.wan is not None or args.kill):
        raise ConfigError("brats data runs without --dp-sweep, --wan and --kill for now")
    if on_mri(args):
        parse_patch(args.patch, args.model)  # a bad patch fails before any work
    if args.wan is not None:
        if args.backend != "process":
            raise ConfigError("--wan needs --backend process (real node processes)")
        if args.kill:
            raise ConfigError("--kill is not supported with --wan")
        WanProfile.parse(args.wan)  # a bad profile fails before any work
    faults = FaultConfig(
        drop=args.drop,
        delay_ms=args.delay,
        deadline_ms=args.deadline,
        slow=dict(parse_slow(s) for s in args.slow),
        crashes=tuple(parse_crash(k) for k in args.kill),
    )
    train = train_config(args)
    data: FederatedData | FederatedCases
    if on_mri(args):
        data = load_brats(Path(args.dataset.split(":", 1)[1]), args.seed, console.print)
        args.partition_used = "natural"
    else:
        data = build_data(args)
    n = len(data.train)
    topology = build_topology(args.topology, n, args.seed)
    compressor = parse_compressor(args.compressor, args.seed, data.label_counts())
    spec = RunSpec(
        args.rounds,
        args.model,
        train,
        args.gamma,
        args.seed,
        pick_device(args.device),
        args.eval_every,
        faults,
        secure=args.secure,
        dp=args.dp,
    )
    if args.dp_sweep:
        from sim.dp_sweep import run_sweep

        assert isinstance(data, FederatedData)
        return run_sweep(args, data, topology, compressor, spec, console)
    sim = (
        SegmentationSimulation(data, topology, spec, parse_patch(args.patch, args.model))
        if isinstance(data, FederatedCases)
        else Simulation(data, topology, spec)
    )
    config = {
        k: (str(v) if isinstance(v, Path) else asdict(v) if isinstance(v, DpConfig) else v)
        for k, v in vars(args).items()
        if k not in ("func", "command")
    }
    used = with_tail_room(compressor, args.secure, args.seed)  # as the gossip methods run it
    config.update(
        nodes=n,
        node_names=data.node_names,
        model_parameters=sim.layout.dim,
        spectral_gap=spectral_gap(topology.matrix(0)),
        gamma=args.gamma
        if args.gamma is not None
        else sorted(set(step_guard(used, sim.layout.dim, topology.matrix(0), n).gamma.tolist())),
        kept_fraction=used.kept_fraction(sim.layout.dim),
        device=str(spec.device),
    )
    console.print(
        f"[bold]Murmur[/] {n} nodes · {args.topology} "
        f"(spectral gap {config['spectral_gap']:.4f}) · {args.dataset} ({args.partition_used}) · "
        f"model {args.model} ({sim.layout.dim} parameters) · {spec.device}"
        + ("" if args.secure == "off" else f" · murmur with secure aggregation ({args.secure})")
        + ("" if args.dp is None else f" · DP ε={args.dp.epsilon:g} δ={args.dp.delta:g}")
    )
    note = split_note(args.split, args.partition_used, n, args.alpha)
    if note is not None:
        console.print(escape(note))
    _, stop_text = (
        (None, "off for segmentation (a site's held-back share would be a scan or two)")
        if isinstance(data, FederatedCases)
        else stop_plan(spec, topology.matrix(0))
        if topology.static
        else (None, "off on a time-varying graph (dense D-PSGD mixes with no stop)")
    )
    config["validation_stop"] = stop_text
    if any(m in GOSSIP_METHODS for m in methods):
        # escape: the line names config sections ("[train]"), which rich reads as markup
        console.print(f"validation stop (gossip methods): {escape(stop_text)}")
    results = []
    began = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        for method in methods:
            task = progress.add_task(method, total=args.rounds)

            def tick(task: TaskID = task) -> None:
                progress.advance(task)

            if args.backend == "process" and method in ("murmur", "murmur-gt", "dpsgd"):
                networked = _run_networked(args, data, train, method, faults, progress, task)
                if isinstance(data, FederatedCases):  # Dice and HD95 per region, by node
                    networked.final.update(node_finals(networked.site_finals, data))
                results.append(networked)
            else:
                results.append(sim.run(method, compressor, tick))
    if "central" in methods:
        results[methods.index("central") + 1 : methods.index("central") + 1] = sim.references()
    table = with_targets(results)
    config["total_wall_s"] = time.perf_counter() - began
    path = write_summary(args.out, config, table)
    plots = plot(args.out, table)
    if isinstance(sim, SegmentationSimulation) and sim.predictions:
        from sim.segmentation_plot import plot_segmentations

        assert isinstance(data, FederatedCases)
        firsts = [cases[0] for cases in data.test]
        plots.append(plot_segmentations(args.out / "segmentation.png", firsts, sim.predictions))
    print_table(table, console)
    console.print(f"wrote {path} and {len(plots)} plots in {args.out}/")
    return {"config": config, "methods": table}


def _run_networked(
    args: argparse.Namespace,
    data: FederatedData | FederatedCases,
    train: TrainConfig,
    method: str,
    faults: FaultConfig,
    progress: Progress,
    task: TaskID,
) -> MethodResult:
    """One gossip method as N real node processes (dpsgd: identity compressor, γ = 1)."""
    from sim.process import run_processes

    spec = consortium_spec(args, train, method, faults)

    def tick(round_: int) -> None:
        progress.update(task, completed=round_)

    if args.wan is None:
        # each round waits at most a deadline for frames, and then trains: a U-Net's
        # round on a shared CPU can take seconds, so the limit grows with the rounds
        limit = max(600.0, args.rounds * (spec.deadline_s + 5.0))
        result = run_processes(
            args.out / method, data, spec, list(faults.crashes), timeout_s=limit, tick=tick
        )
    else:
        assert isinstance(data, FederatedData)
        from sim.wan_run import run_wan

        result, _how = run_wan(args.out / method, data, spec, WanProfile.parse(args.wan))
    result.method = method
    return result


def consortium_spec(
    args: argparse.Namespace, train: TrainConfig, method: str, faults: FaultConfig
) -> ConsortiumSpec:
    """What the process backend's nodes are configured with: the same flags as in-process
    (dpsgd: identity compressor, γ = 1), and metrics served for ``murmur watch``."""
    for text in args.partition:
        parse_partition(text)
    return ConsortiumSpec(
        topology=args.topology,
        model=args.model,
        rounds=args.rounds,
        seed=args.seed,
        compressor="identity" if method == "dpsgd" else args.compressor,
        gamma=1.0 if method == "dpsgd" else args.gamma,
        deadline_s=args.deadline / 1000.0,
        train=train,
        drop=args.drop,
        delay_ms=args.delay,
        slow=dict(faults.slow),
        partitions=tuple(args.partition),
        eval_every=args.eval_every,
        secure="off" if method == "dpsgd" else args.secure,
        dp=args.dp,
        method="murmur-gt" if method == "murmur-gt" else "murmur",
        patch=args.patch,
        metrics=True,  # each node on its own loopback port: `murmur watch --run OUT/<method>`
    )


def _run_command(args: argparse.Namespace) -> int:
    run(args)
    return 0


COMMAND = Command(
    "sim",
    "simulate N sites and compare learning methods on one data split",
    add_arguments,
    _run_command,
)

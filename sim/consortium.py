"""Lay out a whole consortium on disk: one key, data shard and ``site.toml`` per node.

Used by the multi-process simulator and the networked tests: each node directory holds
exactly what a hospital would have (its key, its own rows, its config); the pooled
held-out set is written once as ``eval.npz`` so every node scores itself on the same rows
as in the in-process simulator.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crypto.identity import SiteIdentity, write_key
from node.privacy import DpConfig, for_sites
from node.trainer import TrainConfig
from sim.prep import FederatedData


@dataclass(frozen=True)
class ConsortiumSpec:
    topology: str = "ring"
    model: str = "mlp:32"
    rounds: int = 50
    seed: int = 0
    compressor: str = "top-k:0.1"
    gamma: float | None = None
    deadline_s: float = 5.0
    train: TrainConfig = field(default_factory=TrainConfig)
    drop: float = 0.0
    delay_ms: float = 0.0
    slow: dict[int, float] = field(default_factory=dict)
    partitions: tuple[str, ...] = ()
    eval_every: int = 1
    secure: str = "off"
    dp: DpConfig | None = None
    method: str = "murmur"  # or murmur-gt


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def save_shard(path: Path, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
    """One site's rows as the ``npz:`` file :mod:`node.site_data` reads."""
    np.savez(path, x=x.numpy(), y=y.numpy(), n_classes=n_classes)


def write_consortium(out: Path, data: FederatedData, spec: ConsortiumSpec) -> list[Path]:
    """Write keys, shards and configs for every node; return the config paths."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(data.train)
    identities = [SiteIdentity.generate() for _ in range(n)]
    members = [i.peer_id for i in identities]
    ports = free_ports(n)
    addresses = {m: f"/ip4/127.0.0.1/tcp/{p}" for m, p in zip(members, ports, strict=True)}
    test_x, test_y = data.pooled("test")
    save_shard(out / "eval.npz", test_x, test_y, data.n_classes)
    dp = None if spec.dp is None else for_sites(spec.dp, [len(y) for _, y in data.train])
    paths = []
    for i, identity in enumerate(identities):
        node_dir = out / f"node-{i}"
        if node_dir.exists():
            # A new consortium (new keys): a checkpoint or log of an earlier run in the
            # same directory would be resumed or read as this one's.
            shutil.rmtree(node_dir)
        node_dir.mkdir()
        write_key(node_dir / "site.key", identity)
        x, y = data.train[i]
        save_shard(node_dir / "data.npz", x, y, data.n_classes)
        me = members[i]
        sections: dict[str, dict[str, object]] = {
            "site": {"key": "site.key", "listen": addresses[me], "state_dir": "state"},
            "consortium": {
                "seed": spec.seed,
                "members": members,
                "topology": spec.topology,
                "peers": {m: a for m, a in addresses.items() if m != me},
            },
            "data": {"source": f"npz:{node_dir / 'data.npz'}", "eval": f"npz:{out / 'eval.npz'}"},
            "train": {
                "model": spec.model,
                "rounds": spec.rounds,
                "optimizer": spec.train.optimizer,
                "lr": spec.train.lr,
                "batch_size": spec.train.batch_size,
                "local_steps": spec.train.local_steps,
                "lr_schedule": spec.train.lr_schedule,
                "momentum": spec.train.momentum,
                "nesterov": spec.train.nesterov,
                "prox_mu": spec.train.prox_mu,
                **(
                    {}
                    if spec.train.time_budget_s is None
                    else {"time_budget_s": spec.train.time_budget_s}
                ),
                "eval_every": spec.eval_every,
            },
            "gossip": {
                "compressor": spec.compressor,
                "method": spec.method,
                "gamma": "auto" if spec.gamma is None else spec.gamma,
                "deadline_s": spec.deadline_s,
                "secure": spec.secure,
            },
            **({} if dp is None else {"privacy": _privacy_table(dp)}),
            "faults": {
                "drop": spec.drop,
                "delay_ms": spec.delay_ms,
                "slow": spec.slow.get(i, 1.0),
                "partition": list(spec.partitions),
            },
        }
        text = "\n".join(
            f"[{name}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in table.items()) + "\n"
            for name, table in sections.items()
        )
        path = node_dir / "site.toml"
        path.write_text(text)
        paths.append(path)
    return paths


def _privacy_table(dp: DpConfig) -> dict[str, Any]:
    table: dict[str, Any] = {
        "epsilon": dp.epsilon,
        "delta": dp.delta,
        "clip": dp.clip,
        "accountant": dp.accountant,
        "secure_mode": dp.secure_mode,
        "weight": dp.weight,
    }
    if dp.noise_multiplier is not None:
        table["noise_multiplier"] = dp.noise_multiplier
    if dp.rounds is not None:
        table["rounds"] = dp.rounds
    if dp.mean_records is not None:
        table["mean_records"] = dp.mean_records
    return table

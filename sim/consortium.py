"""Lay out a whole consortium on disk: one key, data shard and ``site.toml`` per node.

Used by the multi-process simulator and the networked tests: each node directory holds
exactly what a hospital would have (its key, its own rows, its config); the pooled
held-out set is written once as ``eval.npz`` so every node scores itself on the same rows
as in the in-process simulator.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crypto.identity import SiteIdentity, write_key
from node.config import (
    DEFAULT_COMPRESSOR,
    METRICS_OFF,
    ConsortiumSection,
    DataSection,
    FaultsSection,
    GossipSection,
    NodeConfig,
    SiteSection,
    TelemetrySection,
    TrainSection,
)
from node.training.dp_config import DpConfig, for_sites
from node.training.trainer import TrainConfig
from sim.prep import FederatedData
from sim.segmentation import FederatedCases


@dataclass(frozen=True)
class ConsortiumSpec:
    topology: str = "ring"
    model: str = TrainSection.model
    rounds: int = 50
    seed: int = 0
    compressor: str = DEFAULT_COMPRESSOR
    gamma: float | None = None
    deadline_s: float = GossipSection.deadline_s
    train: TrainConfig = field(default_factory=TrainConfig)
    drop: float = 0.0
    delay_ms: float = 0.0
    slow: dict[int, float] = field(default_factory=dict)
    partitions: tuple[str, ...] = ()
    eval_every: int = 1
    secure: str = "off"
    dp: DpConfig | None = None
    method: str = "murmur"  # or murmur-gt
    patch: str | None = None  # segmentation: the training patch (None: the model's default)
    # Each node serves Prometheus metrics on its own loopback port (for `murmur watch`);
    # off for in-process nodes, which share one process.
    metrics: bool = False
    mqtt: str | None = None  # every node publishes its events to this broker
    # Each node's IPv4 address when the sites live in their own network namespaces
    # (sim.netns); empty: every node listens on 127.0.0.1 on a free port.
    hosts: tuple[str, ...] = ()


SITE_PORT = 4001  # a namespaced site has its own address, so every site uses this port


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


def save_shard(path: Path, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
    """One site's rows as the ``npz:`` file :mod:`node.training.data` reads."""
    np.savez(path, x=x.numpy(), y=y.numpy(), n_classes=n_classes)


def write_consortium(
    out: Path, data: FederatedData | FederatedCases, spec: ConsortiumSpec
) -> list[Path]:
    """Write keys, shards and configs for every node; return the config paths. A brats
    consortium's nodes read their own site folders and hold out what the simulator does."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(data.train)
    identities = [SiteIdentity.generate() for _ in range(n)]
    members = [i.peer_id for i in identities]
    if spec.hosts and len(spec.hosts) != n:
        raise ValueError(f"{len(spec.hosts)} hosts for {n} nodes")
    ports = free_ports(2 * n)
    listen = (
        [f"/ip4/{host}/tcp/{SITE_PORT}" for host in spec.hosts]
        if spec.hosts
        else [f"/ip4/127.0.0.1/tcp/{p}" for p in ports[:n]]
    )
    metrics = [f"127.0.0.1:{p}" if spec.metrics else METRICS_OFF for p in ports[n:]]
    addresses = dict(zip(members, listen, strict=True))
    if isinstance(data, FederatedData):
        test_x, test_y = data.pooled("test")
        save_shard(out / "eval.npz", test_x, test_y, data.n_classes)
    # each site's records: its table rows, or its patients
    dp = None if spec.dp is None else for_sites(spec.dp, [len(part) for part in data.train])
    paths = []
    for i, identity in enumerate(identities):
        node_dir = out / f"node-{i}"
        if node_dir.exists():
            # A new consortium (new keys): a checkpoint or log of an earlier run in the
            # same directory would be resumed or read as this one's.
            shutil.rmtree(node_dir)
        node_dir.mkdir()
        write_key(node_dir / "site.key", identity)
        if isinstance(data, FederatedData):
            x, y = data.train[i]
            save_shard(node_dir / "data.npz", x, y, data.n_classes)
            source = DataSection(
                source=f"npz:{node_dir / 'data.npz'}", eval_source=f"npz:{out / 'eval.npz'}"
            )
        else:
            source = DataSection(source=f"brats:{data.folders[i].resolve()}")
        me = members[i]
        config = NodeConfig(
            site=SiteSection(key=Path("site.key"), listen=addresses[me]),
            consortium=ConsortiumSection(
                seed=spec.seed,
                members=tuple(members),
                topology=spec.topology,
                peers={m: a for m, a in addresses.items() if m != me},
            ),
            data=source,
            train=TrainSection(
                model=spec.model,
                rounds=spec.rounds,
                eval_every=spec.eval_every,
                trainer=spec.train,
                patch=spec.patch,
            ),
            gossip=GossipSection(
                compressor=spec.compressor,
                method=spec.method,
                gamma=spec.gamma,
                deadline_s=spec.deadline_s,
                secure=spec.secure,
            ),
            privacy=dp,
            telemetry=TelemetrySection(mqtt=spec.mqtt, metrics=metrics[i]),
            faults=FaultsSection(
                drop=spec.drop,
                delay_ms=spec.delay_ms,
                slow=spec.slow.get(i, 1.0),
                partition=spec.partitions,
            ),
        )
        path = node_dir / "site.toml"
        path.write_text(config.to_toml())
        paths.append(path)
    return paths

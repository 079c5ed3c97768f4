"""Gradient tracking (murmur-gt): the tracker follows the average step, it removes the
drift plain CHOCO keeps between heterogeneous sites, and it runs on nodes and in secure
mode like plain gossip."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crypto.identity import load_key
from node.config import load_config
from node.gossip.choco import ChocoState, add_self_contribution, fresh_columns, mix_step
from node.gossip.compress import stacked
from node.gossip.registry import parse_compressor
from node.gossip.step_guard import guarded_compress, step_guard
from node.gossip.tracking import GradientTracker
from node.runtime import Node
from node.training.trainer import TrainConfig, TrainStats
from node.transport.memory import MemoryNetwork, MemoryTransport
from sim.consortium import ConsortiumSpec, write_consortium
from sim.engine import Simulation
from sim.exchange import exchange_round
from sim.network import SimNetwork
from sim.prep import FederatedData
from sim.results import RunSpec
from tests.node_kit import subset
from topology import build_graph, build_topology, metropolis_hastings

TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16)


class Quadratic:
    """K sites, site i minimising ½‖x − c_i‖² by one gradient step a round: the minimiser
    of the average is the mean of the c_i, each site's own optimum is its c_i."""

    def __init__(self, centres: torch.Tensor, lr: float) -> None:
        self.centres = centres
        self.lr = lr
        self.params = torch.zeros_like(centres)

    def train(self, active: torch.Tensor | None = None) -> TrainStats:
        self.params.sub_(self.lr * (self.params - self.centres))
        return TrainStats(torch.zeros(self.params.shape[0]), 1, 0.0)

    def set_progress(self, fraction: float) -> None: ...

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_own(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None: ...


def _run(tracking: bool, rounds: int) -> tuple[Quadratic, list[float]]:
    n, d = 10, 40
    w = metropolis_hastings(build_graph("ring", n))
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(n, d, dtype=torch.float64, generator=gen) * 3
    trainer = Quadratic(centres, lr=0.05)
    tracker = (
        GradientTracker(trainer.params, torch.zeros(d, dtype=torch.float64)) if tracking else None
    )
    state = (
        tracker.state
        if tracker
        else ChocoState.start(trainer.params, torch.zeros(d, dtype=torch.float64))
    )
    comp = stacked(parse_compressor("rand-k:0.25", seed=1), 2 if tracking else 1)
    dim = state.x.shape[1]
    guard = step_guard(comp, dim, w, n)
    net = SimNetwork(w, None, torch.device("cpu"))
    up = np.ones(n, dtype=bool)
    gaps = []
    for t in range(rounds):
        if tracker:
            step = trainer.lr * (trainer.params - centres)  # the step each site will take
            tracker.train(trainer)
            v = state.x[:, d:]
            # Tracking identity: the trackers' average is the sites' average step.
            torch.testing.assert_close(v.mean(0), step.mean(0), rtol=0, atol=1e-9)
        else:
            trainer.train()
        q = guarded_compress(state, comp, t, None, guard)
        add_self_contribution(state, q, net.self_weight)
        exchange_round(net, t, q, state, up, up)
        guard.step(state, net.heard_steps)
        mix_step(state, guard.gamma, fresh=fresh_columns(q) if guard.fresh else None)
        if tracker:
            tracker.sync(trainer)
        gaps.append(float((trainer.params - centres.mean(0)).norm(dim=1).max()))
    return trainer, gaps


def test_tracking_removes_the_drift_between_heterogeneous_sites() -> None:
    """With a constant step, plain CHOCO settles each site away from the common optimum
    (pulled to its own c_i); gradient tracking brings every site to it."""
    _, plain = _run(tracking=False, rounds=3000)
    _, tracked = _run(tracking=True, rounds=3000)
    assert plain[-1] > 0.5  # drift that no amount of rounds removes
    assert tracked[-1] < 1e-3 * plain[-1]


def test_murmur_gt_in_secure_mode_matches_plaintext(wisconsin16: FederatedData) -> None:
    """Everything murmur-gt sends is a linear sum: the secure protocol (plain cipher)
    gives the same models as the plaintext exchange."""
    results = {}
    # The models' exchange alone: the validation stop (compared in
    # tests/test_validation_stop.py) is left off in both.
    train = replace(TRAIN, stop_patience=0)
    for secure in ("off", "plain"):
        spec = RunSpec(20, "mlp:32", train, None, 0, torch.device("cpu"), 20, secure=secure)
        sim = Simulation(wisconsin16, build_topology("ring", 16), spec)
        result = sim.run("murmur-gt", parse_compressor("block-k:0.2"))
        results[secure] = (result.final["accuracy_mean"], sim.last_state.x.clone())
    torch.testing.assert_close(results["off"][1], results["plain"][1], atol=1e-4, rtol=1e-4)


def test_murmur_gt_on_nodes(wisconsin16: FederatedData, tmp_path: Path) -> None:
    """Four nodes over the memory transport with [gossip] method = murmur-gt learn; their
    frames carry the stacked model and tracker."""
    data = subset(wisconsin16, 4)
    spec = ConsortiumSpec(rounds=30, train=TRAIN, method="murmur-gt", compressor="top-k:0.1")
    network = MemoryNetwork()
    nodes = []
    for path in write_consortium(tmp_path, data, spec):
        config = load_config(path)
        assert config.gossip.method == "murmur-gt"
        transport = MemoryTransport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, transport, log=io.StringIO()))

    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(n.run() for n in nodes)))

    results = asyncio.run(run())
    assert all(float(r["accuracy"]) > 0.85 for r in results)  # type: ignore[arg-type]
    assert nodes[0].state.x.shape[1] == 2 * nodes[0].learner.parts.layout.dim

"""End-to-end: 16 simulated hospitals on a ring learn Wisconsin by compressed gossip."""

from __future__ import annotations

import pytest
import torch

from node.gossip.registry import parse_compressor
from node.training.trainer import TrainConfig
from sim.engine import Simulation
from sim.prep import FederatedData
from sim.results import RunSpec
from topology import build_topology


@pytest.mark.slow
def test_sixteen_node_ring_learns_wisconsin(wisconsin16: FederatedData) -> None:
    spec = RunSpec(
        rounds=150,
        model="mlp:32",
        train=TrainConfig(optimizer="sgd", lr=0.3, batch_size=16),
        gamma=None,  # auto: 0.45 for top-k 10%
        seed=0,
        device=torch.device("cpu"),
    )
    sim = Simulation(wisconsin16, build_topology("ring", 16), spec)
    local = sim.run("local").final
    murmur = sim.run("murmur", parse_compressor("top-k:0.1")).final
    dpsgd = sim.run("dpsgd").final
    mean, worst, local_worst = (
        murmur["accuracy_mean"],
        murmur["accuracy_min"],
        local["accuracy_min"],
    )
    assert mean is not None and worst is not None and local_worst is not None
    assert mean > 0.93
    assert worst > local_worst + 0.2  # gossip rescues skewed nodes
    assert float(murmur["bytes_per_node"] or 0) < 0.25 * float(dpsgd["bytes_per_node"] or 0)

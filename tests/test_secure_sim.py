"""Secure aggregation in the in-process simulator: exact sums under faults, CKKS vs plaintext."""

from __future__ import annotations

import pytest
import torch

from node.errors import ConfigError
from node.gossip.registry import parse_compressor
from node.training.trainer import TrainConfig
from sim.engine import Simulation
from sim.faults import Crash, FaultConfig
from sim.prep import FederatedData
from sim.results import RunSpec
from sim.secure_network import SecureSimNetwork
from topology import build_topology

# These compare the models' exchange alone, so the validation stop, which runs in both
# modes (tests/test_validation_stop.py compares it), is left off.
TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, stop_patience=0)


def _spec(rounds: int, secure: str, faults: FaultConfig | None = None) -> RunSpec:
    return RunSpec(
        rounds,
        "mlp:32",
        TRAIN,
        None,
        0,
        torch.device("cpu"),
        eval_every=rounds,
        faults=faults or FaultConfig(),
        secure=secure,
    )


def test_sums_stay_exact_through_drops_and_a_crash(wisconsin16: FederatedData) -> None:
    """s_i = W_ii x̂_i + Σ_j W_ij c_{j→i} after drops, a crash and a restart."""
    faults = FaultConfig(drop=0.2, crashes=(Crash(3, 10, 25),))
    sim = Simulation(wisconsin16, build_topology("ring", 16), _spec(40, "plain", faults))
    result = sim.run("murmur", parse_compressor("block-k:0.2:64"))
    assert int(result.final["frames_missed"] or 0) > 20
    network, state = sim.last_exchange, sim.last_state
    assert isinstance(network, SecureSimNetwork)
    w = build_topology("ring", 16).matrix(0)
    for i in range(16):
        expected = w[i, i] * state.xhat[i].double()
        for j in network.neighbours[i]:
            expected += w[i, j] * network.outbox[(j, i)].copy.double()
        torch.testing.assert_close(state.s[i].double(), expected, atol=1e-5, rtol=1e-5)
    # Nothing is lost: what is still owed on every link is a small part of the model.
    owed = max(
        float((state.xhat[j] - box.copy).norm() / state.xhat[j].norm())
        for (j, _), box in network.outbox.items()
    )
    assert owed < 0.3


def test_secure_mode_refuses_per_site_indices(wisconsin16: FederatedData) -> None:
    sim = Simulation(wisconsin16, build_topology("ring", 16), _spec(2, "plain"))
    with pytest.raises(ConfigError, match="block-k:F or rand-k:F"):
        sim.run("murmur", parse_compressor("top-k:0.1"))


@pytest.mark.slow
def test_ckks_ring_matches_the_plaintext_run(wisconsin16: FederatedData) -> None:
    """16-node ring on Wisconsin: --secure ckks ends within 0.5 points of plaintext."""
    compressor = parse_compressor("block-k:0.05")
    topology = build_topology("ring", 16)
    plain_sim = Simulation(wisconsin16, topology, _spec(120, "off"))
    plain = plain_sim.run("murmur", compressor)
    ckks_sim = Simulation(wisconsin16, topology, _spec(120, "ckks"))
    ckks = ckks_sim.run("murmur", compressor)
    gap = abs(float(ckks.final["accuracy_mean"] or 0) - float(plain.final["accuracy_mean"] or 0))
    assert gap <= 0.005
    assert float(ckks.final["accuracy_mean"] or 0) > 0.9
    network = ckks_sim.last_exchange
    assert isinstance(network, SecureSimNetwork) and network.cipher.name == "ckks"
    # The same models up to CKKS noise, not merely the same accuracy.
    drift = float((ckks_sim.last_state.x - plain_sim.last_state.x).abs().max())
    assert drift < 1e-3

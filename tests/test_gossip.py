from __future__ import annotations

from typing import cast

import numpy as np
import torch

from node.gossip.choco import (
    ChocoState,
    add_self_contribution,
    compress_step,
    mix_step,
)
from node.gossip.compress import Identity
from node.gossip.registry import parse_compressor
from sim.exchange import exchange_round
from sim.faults import FaultConfig, FaultModel
from sim.network import SimNetwork
from topology import build_graph, metropolis_hastings, spectral_gap


def _gossip(
    w: np.ndarray,
    x0: torch.Tensor,
    spec: str,
    gamma: float,
    rounds: int,
    faults: FaultModel | None = None,
) -> tuple[ChocoState, SimNetwork, list[float]]:
    state = ChocoState.start(x0.clone())
    net = SimNetwork(w, faults, torch.device("cpu"))
    comp = Identity() if spec == "identity" else parse_compressor(spec, seed=1)
    n = w.shape[0]
    up = np.ones(n, dtype=bool)
    errors = []
    mean = x0.mean(0)
    for t in range(rounds):
        q = compress_step(state, comp, t)
        add_self_contribution(state, q, net.self_weight)
        exchange_round(net, t, q, state, up, up)
        mix_step(state, gamma)
        errors.append(float(((state.x - mean) ** 2).sum()))
    return state, net, errors


def test_choco_identity_gamma_one_equals_dense_dpsgd() -> None:
    w = metropolis_hastings(build_graph("ring", 8))
    x0 = torch.randn(8, 50, dtype=torch.float64)
    state = ChocoState.start(x0.clone())
    net = SimNetwork(w, None, torch.device("cpu"))
    wt = torch.from_numpy(w)
    reference = x0.clone()
    up = np.ones(8, dtype=bool)
    for t in range(10):
        drift = torch.randn(8, 50, dtype=torch.float64)  # stands in for local training
        state.x.add_(drift)
        reference += drift
        q = compress_step(state, Identity(), t)
        add_self_contribution(state, q, net.self_weight.double())
        exchange_round(net, t, q, state, up, up)
        mix_step(state, 1.0)
        reference = wt @ reference
        assert torch.allclose(state.x, reference, atol=1e-10)


def test_compressed_averaging_converges_at_spectral_gap_rate() -> None:
    n = 16
    w = metropolis_hastings(build_graph("ring", n))
    x0 = torch.randn(n, 64, dtype=torch.float64)
    _, _, dense = _gossip(w, x0, "identity", 1.0, 600)
    _, _, compressed = _gossip(w, x0, "top-k:0.25", 0.3, 600)
    rho = spectral_gap(w)
    # Dense gossip contracts by (1 − ρ)² per round (squared error).
    rate = (dense[250] / dense[50]) ** (1 / 200)
    assert abs(rate - (1 - rho) ** 2) < 0.01
    # Compressed gossip also converges linearly to the exact mean, more slowly.
    assert compressed[-1] < 1e-6 * compressed[0]
    slow_rate = (compressed[550] / compressed[50]) ** (1 / 500)
    assert rate < slow_rate < 1.0


def test_backlog_keeps_every_running_sum_exact_under_drops() -> None:
    n = 12
    w = metropolis_hastings(build_graph("regular:4", n, seed=2))
    faults = FaultModel(FaultConfig(drop=0.3, delay_ms=400.0, deadline_ms=1000.0), n, seed=3)
    x0 = torch.randn(n, 40, dtype=torch.float64)
    state = ChocoState.start(x0.clone(), x0.mean(0))
    net = SimNetwork(w, faults, torch.device("cpu"))
    comp = parse_compressor("top-k:0.2")
    up = np.ones(n, dtype=bool)
    missed = 0
    for t in range(40):
        state.x.add_(0.1 * torch.randn(n, 40, dtype=torch.float64))
        q = compress_step(state, comp, t)
        add_self_contribution(state, q, net.self_weight.double())
        missed += exchange_round(net, t, q, state, up, up)[0].missed
        mix_step(state, 0.3)
    assert missed > 50  # the fault model really dropped frames
    expected = torch.from_numpy(w) @ state.xhat
    assert not torch.allclose(state.s, expected, atol=1e-9)  # backlogs still in flight
    net.finish(state.s)
    assert torch.allclose(state.s, expected, atol=1e-9)


class _LoseOnce:
    """Faults that lose edge 0's frame in round 0 and deliver everything else."""

    def __init__(self) -> None:
        self.round = 0

    def deliveries(
        self, src: np.ndarray, dst: np.ndarray, alive: np.ndarray
    ) -> tuple[np.ndarray, float]:
        on_time = np.ones(len(src), dtype=bool)
        on_time[0] = self.round != 0
        self.round += 1
        return on_time, 0.0


def test_a_part_counts_as_included_only_once_it_is_in_s() -> None:
    """Edge 0 loses its round-0 item. Round 1's item arrives but cannot be applied before
    the lost one (in order only), so it is not included; round 2 resends the backlog and
    both rounds' parts go in, and every s_i is exact again."""
    w = metropolis_hastings(build_graph("ring", 4))
    net = SimNetwork(w, cast(FaultModel, _LoseOnce()), torch.device("cpu"))
    x0 = torch.randn(4, 12, dtype=torch.float64)
    state = ChocoState.start(x0.clone(), x0.mean(0))
    comp = parse_compressor("top-k:0.5")
    up = np.ones(4, dtype=bool)
    j, i = int(net.src[0]), int(net.dst[0])
    seen = []
    for t in range(3):
        state.x.add_(0.1 * torch.randn(4, 12, dtype=torch.float64))
        q = compress_step(state, comp, t)
        add_self_contribution(state, q, net.self_weight.double())
        _, included = exchange_round(net, t, q, state, up, up)
        seen.append(bool(included[i, j]))
        assert included.sum() == 8 - (not seen[-1])  # every other part is in
        mix_step(state, 0.5)
    assert seen == [False, False, True]
    assert torch.allclose(state.s, torch.from_numpy(w) @ state.xhat, atol=1e-12)

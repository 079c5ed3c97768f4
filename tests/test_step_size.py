"""The consensus step: its analysis predicts real gossip, mixing converges to the exact
average with it on any connected graph and compressor, and the guard backs off growth."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.gossip.choco import (
    ChocoState,
    add_self_contribution,
    consensus_distance,
    fresh_columns,
    mix_step,
)
from node.gossip.compress import (
    Compressor,
    RandK,
    keep_count,
    round_generator,
    shared_indices,
)
from node.gossip.registry import parse_compressor
from node.gossip.step_guard import MAX_BACKOFFS, StepGuard, guarded_compress, step_guard
from node.gossip.step_size import (
    choose_gamma,
    contraction,
    mixing_modes,
    second_moment_rate,
    theorem_gamma,
)
from sim.exchange import exchange_round, gossip_round
from sim.network import SimNetwork
from topology import build_graph, metropolis_hastings

SPECS = ["identity", "top-k:0.2", "rand-k:0.2", "block-k:0.2", "block-k:0.2+q8", "top-k:0.2+q8"]


class IidRandK(RandK):
    """rand-k drawn afresh every round, independently: the process the analysis models
    exactly (Murmur's rand-k takes its coordinates without replacement across rounds)."""

    def indices(self, dim: int, round: int) -> torch.Tensor:
        k = keep_count(self.fraction, dim)
        perm = torch.randperm(dim, generator=round_generator(self.seed, round, 1))
        return perm[:k].sort().values


def _mix(
    w: np.ndarray,
    x0: torch.Tensor,
    spec: str | Compressor,
    rounds: int,
    gamma: float | None = None,
    fresh: bool = True,
) -> tuple[list[float], list[torch.Tensor]]:
    """Gossip alone from public copies at zero; returns the consensus distance and the
    nodes' average after every round. ``fresh=False``: every coordinate mixes with γ,
    the shared index set too (plain CHOCO, for comparison)."""
    state = ChocoState.start(x0.clone())
    net = SimNetwork(w, None, torch.device("cpu"))
    comp = parse_compressor(spec, seed=3) if isinstance(spec, str) else spec
    guard = None if gamma is not None else step_guard(comp, x0.shape[1], w, w.shape[0])
    up = np.ones(w.shape[0], dtype=bool)
    distances, means = [], []
    for t in range(rounds):
        q = guarded_compress(state, comp, t, None, guard)
        add_self_contribution(state, q, net.self_weight)
        exchange_round(net, t, q, state, up, up)
        if guard is not None:
            guard.step(state, net.heard_steps)
        step = guard.gamma if guard is not None else float(gamma or 0.0)
        mix_step(state, step, fresh=fresh_columns(q) if fresh else None)
        distances.append(consensus_distance(state.x))
        means.append(state.x.mean(0))
    return distances, means


@st.composite
def connected_graphs(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(4, 12))
    p = draw(st.floats(0.25, 0.9))
    seed = draw(st.integers(0, 10_000))
    graph = nx.gnp_random_graph(n, p, seed=seed)
    for i in range(n - 1):  # a path through every node keeps it connected
        graph.add_edge(i, i + 1)
    return metropolis_hastings(graph)


@settings(max_examples=12, deadline=None)
@given(connected_graphs(), st.sampled_from(SPECS), st.integers(0, 1000))
def test_mixing_alone_reaches_the_exact_average_with_the_auto_step(
    w: np.ndarray, spec: str, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(w.shape[0], 64, generator=gen, dtype=torch.float64)
    start = consensus_distance(x0)
    distances, means = _mix(w, x0, spec, 2500)
    assert max(distances) <= 10 * start  # never blows up on the way
    assert distances[-1] <= 1e-3 * start, (spec, distances[::250])
    for mean in means:  # W doubly stochastic, one γ for all: the average never moves
        torch.testing.assert_close(mean, x0.mean(0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("fresh", [True, False])
def test_the_analysis_predicts_the_decay_of_real_gossip(fresh: bool) -> None:
    """For rand-k drawn i.i.d. per round, the second moment of the consensus error decays
    at the analysed rate r(γ), with the kept coordinates mixing with step 1 (as nodes
    mix) or with γ like the rest (plain CHOCO); past the stability edge it grows. Taken
    without replacement, as Murmur's rand-k is, it decays at least as fast."""
    w = metropolis_hastings(build_graph("ring", 8))
    delta = 0.25
    choice = choose_gamma(w, delta, fresh)
    assert choice.gamma < choice.edge
    x0 = torch.randn(8, 4000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    iid = IidRandK(delta, seed=3)
    distances, _ = _mix(w, x0, iid, 300, gamma=choice.gamma, fresh=fresh)
    measured = (distances[-1] / distances[99]) ** (1 / 200)
    assert measured == pytest.approx(choice.rate, abs=0.004)
    passes, _ = _mix(w, x0, "rand-k:0.25", 300, gamma=choice.gamma, fresh=fresh)
    assert (passes[-1] / passes[99]) ** (1 / 200) <= choice.rate + 0.004
    unstable, _ = _mix(w, x0, iid, 300, gamma=2 * choice.edge, fresh=fresh)
    assert unstable[-1] > 10 * unstable[0]
    predicted = second_moment_rate(np.array([2 * choice.edge]), mixing_modes(w), delta, fresh)
    assert float(predicted[0]) > 1.0


@pytest.mark.parametrize("topology", ["ring", "torus", "exponential"])
def test_fresh_coordinates_mix_faster_than_one_step_for_all(topology: str) -> None:
    """Measured on real gossip (rand-k 10%, 16 sites, each with its analysed γ): the
    consensus error decays at least 1.5 times as fast per round when the round's shared
    coordinates mix with step 1, the average held exactly all the same."""
    w = metropolis_hastings(build_graph(topology, 16))
    x0 = torch.randn(16, 2560, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    decays = []
    for fresh in (True, False):
        gamma = choose_gamma(w, 0.1, fresh).gamma
        distances, means = _mix(w, x0, "rand-k:0.1", 400, gamma=gamma, fresh=fresh)
        decays.append(1 - (distances[-1] / distances[99]) ** (1 / 300))
        torch.testing.assert_close(means[-1], x0.mean(0), rtol=0, atol=1e-9)
    assert decays[0] > 1.5 * decays[1], decays


def test_the_step_is_far_above_the_worst_case_theorem_and_below_the_edge() -> None:
    w = metropolis_hastings(build_graph("ring", 16))
    choice = choose_gamma(w, 0.01)
    assert theorem_gamma(w, 0.01) < 1e-4 < choice.gamma < choice.edge
    # identity is dense D-PSGD
    assert choose_gamma(w, 1.0).gamma == 1.0


def test_contraction_of_each_compressor() -> None:
    dim = 1000
    assert contraction(parse_compressor("identity"), dim) == [1.0]
    assert contraction(parse_compressor("rand-k:0.05"), dim) == [0.05]
    assert contraction(parse_compressor("top-k:0.01"), dim) == [0.01]
    block = parse_compressor("block-k:0.1")
    assert contraction(block, dim) == [block.kept_fraction(dim)]
    (q8,) = contraction(parse_compressor("rand-k:0.05+q8"), dim)
    assert q8 == pytest.approx(0.05 * (1 - 50 / (4 * 127**2)))
    adaptive = parse_compressor("top-k:adaptive:0.1", label_counts=[[50, 50], [90, 10]])
    assert contraction(adaptive, dim) == [0.1, pytest.approx(0.047, abs=1e-3)]


def test_guard_halves_on_sustained_growth_and_not_on_healthy_residuals() -> None:
    w = metropolis_hastings(build_graph("ring", 4))
    guard = StepGuard(w, torch.full((2,), 0.1, dtype=torch.float64))
    start = guard.gamma.clone()
    for t in range(400):
        healthy = 1.0 + 0.5 * np.sin(t / 7) + 5.0 * np.exp(-t / 30)  # rises, wobbles, settles
        growing = 1.01**t
        guard.observe(torch.tensor([healthy, growing], dtype=torch.float64))
        guard.agree(torch.full((2,), math.inf))  # two sites that hear from no one
    assert guard.backoffs[0] == 0 and guard.gamma[0] == start[0]
    assert guard.backoffs[1] >= 1 and guard.gamma[1] < start[1]
    saved = guard.state_dict()
    again = StepGuard(w, torch.full((2,), 0.1, dtype=torch.float64))
    again.load_state_dict(saved)
    assert torch.equal(again.gamma, guard.gamma)


def test_guard_rescues_a_step_that_is_too_large() -> None:
    """A site whose contraction is overstated (δ = 0.6 for top-k 5%) starts with a γ past
    the edge; its residuals grow and the guard halves γ until consensus holds."""
    w = metropolis_hastings(build_graph("torus", 9))
    x0 = torch.randn(9, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    comp = parse_compressor("top-k:0.05")
    guard = StepGuard(w, torch.full((9,), 0.6, dtype=torch.float64))
    state = ChocoState.start(x0.clone())
    net = SimNetwork(w, None, torch.device("cpu"))
    up = np.ones(9, dtype=bool)
    gen = torch.Generator().manual_seed(3)
    distances = []
    for t in range(1500):
        state.x.add_(0.01 * torch.randn(9, 200, dtype=torch.float64, generator=gen))
        q = guarded_compress(state, comp, t, None, guard)
        add_self_contribution(state, q, net.self_weight)
        exchange_round(net, t, q, state, up, up)
        guard.step(state, net.heard_steps)
        assert torch.all(guard.gamma == guard.gamma[0])  # one γ at every site, always
        mix_step(state, guard.gamma)
        distances.append(consensus_distance(state.x))
    assert int(guard.backoffs.sum()) >= 1
    assert distances[-1] < distances[0]
    assert max(distances[-300:]) < 10 * distances[0]


def test_top_k_learns_a_contraction_above_its_worst_case() -> None:
    w = metropolis_hastings(build_graph("ring", 8))
    comp = parse_compressor("top-k:0.01")
    guard = step_guard(comp, 1000, w, 8)
    assert guard.learn
    before = guard.gamma.clone()
    x0 = torch.zeros(8, 1000, dtype=torch.float64)
    x0[:, :20] = torch.randn(8, 20, dtype=torch.float64)  # energy in few coordinates
    state = ChocoState.start(x0)
    for t in range(guard.window + guard.lag + 1):
        state.x[:, :20] += 0.1 * torch.randn(8, 20, dtype=torch.float64)
        guarded_compress(state, comp, t, None, guard)
        guard.observe(StepGuard.residuals(state.x, state.xhat, state.s))
        guard.agree(torch.full((8,), math.inf))
    assert bool((guard.delta > 0.01).all()) and bool((guard.gamma > before).all())


def test_a_neighbours_tiny_step_cannot_stall_mixing() -> None:
    """A member announcing γ = 1e-12 takes its neighbours at most MAX_BACKOFFS halvings
    below their analysed step, and a site's own back-offs stop there too."""
    w = metropolis_hastings(build_graph("ring", 4))
    guard = StepGuard(w, torch.full((4,), 0.2, dtype=torch.float64))
    start = guard.gamma.clone()
    for _ in range(guard.window + guard.lag + 1):
        guard.observe(torch.ones(4, dtype=torch.float64))
        guard.agree(torch.full((4,), 1e-12, dtype=torch.float64))
    assert torch.allclose(guard.gamma, start * guard.factor**MAX_BACKOFFS)


def test_windows_follow_round_numbers_across_a_catch_up() -> None:
    """A site that skips rounds (catching up after a restart) still ends its windows, and
    takes its stamps, at the same round numbers as its neighbours."""
    w = metropolis_hastings(build_graph("ring", 6))
    steady = StepGuard(w, torch.full((1,), 0.2, dtype=torch.float64))
    skipping = StepGuard(w, torch.full((1,), 0.2, dtype=torch.float64))
    one = torch.ones(1, dtype=torch.float64)
    for t in range(60):
        steady.observe(one, t)
        if not 12 <= t < 27:  # down for 15 rounds, then straight to round 27
            skipping.observe(one, t)
        if t >= 27:
            assert skipping.stamp == steady.stamp == (t + 1) // steady.window


@pytest.mark.parametrize("analysed", [True, False])
def test_kept_coordinates_take_step_1_with_the_analysed_step_only(analysed: bool) -> None:
    """With --gamma auto the round's shared coordinates mix with step 1 and the rest with
    the guard's γ; a γ set by hand (0.01 here) is used for every coordinate, as chosen."""
    w = metropolis_hastings(build_graph("ring", 6))
    comp = parse_compressor("rand-k:0.25", seed=2)
    gen = torch.Generator().manual_seed(5)
    state = ChocoState.start(torch.randn(6, 200, dtype=torch.float64, generator=gen))
    net = SimNetwork(w, None, torch.device("cpu"))
    up = np.ones(6, dtype=bool)
    step: StepGuard | float = step_guard(comp, 200, w, 6) if analysed else 0.01
    before = state.x.clone()
    mask = torch.zeros(200, dtype=torch.bool)
    shared = shared_indices(comp, 200)
    assert shared is not None
    mask[shared(0)] = True
    gossip_round(net, 0, state, comp, step, up, up)
    moved = state.x - before
    pull = state.s - state.xhat  # unchanged by the mix step
    gamma = float(step.gamma[0]) if isinstance(step, StepGuard) else step
    torch.testing.assert_close(moved[:, ~mask], gamma * pull[:, ~mask])
    torch.testing.assert_close(moved[:, mask], (1.0 if analysed else gamma) * pull[:, mask])
    torch.testing.assert_close(state.x.mean(0), before.mean(0), rtol=0, atol=1e-12)

"""The consortium's validation stop (node.gossip.validation_stop): the held-back rows, the
tracked estimate of the pooled validation loss, when sites stop, the wire field, and the
same stop on real nodes as in the simulator."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import msgpack
import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import MalformedFrameError
from node.gossip.registry import parse_compressor
from node.gossip.validation_stop import (
    MIN_WINDOW,
    ValidationStop,
    earliest_stop,
    mix_estimates,
    split_validation,
    window_rounds,
)
from node.training.dp_config import DpConfig
from node.training.trainer import TrainConfig
from node.wire.update import Validation, decode_update, encode_update, validation_bytes
from sim.consortium import ConsortiumSpec, write_consortium
from sim.engine import Simulation
from sim.faults import FaultConfig
from sim.own_loops import memory_nodes
from sim.prep import FederatedData
from sim.results import RunSpec
from sim.validation import stop_plan
from tests.node_kit import events, run_nodes, subset
from topology import build_topology, metropolis_hastings


def test_held_back_rows_are_a_fifth_the_same_every_time_and_disjoint() -> None:
    x = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(50) % 2
    (fx, fy), (vx, vy) = split_validation(x, y, seed=3, site=2)
    assert len(vy) == 10 and len(fy) == 40
    assert set(fx[:, 0].tolist()).isdisjoint(vx[:, 0].tolist())
    assert sorted(fx[:, 0].tolist() + vx[:, 0].tolist()) == list(range(50))
    again = split_validation(x, y, seed=3, site=2)[1][0]
    assert torch.equal(again, vx)
    other = split_validation(x, y, seed=3, site=1)[1][0]
    assert not torch.equal(other, vx)  # each site holds back its own draw
    tiny = split_validation(x[:4], y[:4], seed=3, site=2)
    assert len(tiny[1][1]) == 0 and len(tiny[0][1]) == 4  # too few rows to hold any back


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 12),
    p=st.floats(0.3, 0.9),
    seed=st.integers(0, 10_000),
)
def test_every_site_reads_the_pooled_loss_on_a_random_graph(n: int, p: float, seed: int) -> None:
    """Windowed ratio consensus: the sum of estimates is the sum of the sites' scores every
    round, and every site's reading converges to Σ loss / Σ rows."""
    graph = nx.gnp_random_graph(n, p, seed=seed)
    if not nx.is_connected(graph):
        graph = nx.compose(graph, nx.path_graph(n))
    w = metropolis_hastings(graph)
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(rng.integers(0, 30, n).astype(np.float64))
    rows[0] = max(float(rows[0]), 1.0)
    sums = torch.stack([rows * torch.from_numpy(rng.uniform(0.1, 2.0, n)), rows], 1)
    stop = ValidationStop(n, patience=10_000)
    stop.observe(MIN_WINDOW - 1, sums)
    everyone = np.ones((n, n), dtype=bool)
    for t in range(2000):
        mixed = mix_estimates(w, stop.estimate, everyone)
        stop.mix(mixed, torch.zeros(n, dtype=torch.bool), t)
        assert torch.allclose(stop.estimate.sum(0), sums.sum(0), rtol=1e-5)
    pooled = float(sums[:, 0].sum() / sums[:, 1].sum())
    assert torch.allclose(stop.reading(), torch.full((n,), pooled, dtype=torch.float64), rtol=1e-4)


def test_a_silent_neighbour_counts_as_the_sites_own_estimate() -> None:
    w = metropolis_hastings(nx.path_graph(3))
    estimate = torch.tensor([[1.0, 1.0], [5.0, 1.0], [9.0, 1.0]], dtype=torch.float64)
    heard = np.ones((3, 3), dtype=bool)
    heard[:, 1] = False  # site 1's frames were lost
    mixed = mix_estimates(w, estimate, heard)
    assert torch.allclose(mixed[0], estimate[0])  # its one neighbour was not heard
    expected = torch.from_numpy(w[1]) @ estimate
    assert torch.allclose(mixed[1], expected)  # both its neighbours sent
    assert torch.allclose(mixed[2], estimate[2])


def test_stops_after_patience_without_improvement() -> None:
    """Each window's reading is judged at the next window's end (the scores have mixed
    by then); ``patience`` rounds after the best one the site stops."""
    stop = ValidationStop(1, patience=30, window=10)
    losses = [5.0, 4.0, 3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0]
    stopped_at = None
    for i, loss in enumerate(losses):
        t = (i + 1) * 10 - 1
        now = stop.observe(t, torch.tensor([[loss * 10, 10.0]]))
        if bool(now[0]):
            stopped_at = t + 1
            break
    # The 2.0 scored at round 40 is read at round 50, the best; 30 rounds later it stops.
    assert stopped_at == 80
    assert float(stop.best[0]) == pytest.approx(2.0)
    assert int(stop.stopped_round[0]) == 80


def test_a_reading_stays_within_the_sites_own_losses() -> None:
    """However the scores jump between windows, a reading is a convex combination of the
    sites' own losses: never below the lowest (the outlier that would stop a run early)."""
    w = metropolis_hastings(nx.cycle_graph(8))
    stop = ValidationStop(8, patience=10_000, window=30)
    rng = np.random.default_rng(0)
    everyone = np.ones((8, 8), dtype=bool)
    low = high = math.nan
    for t in range(600):
        if stop.due(t):
            rows = torch.from_numpy(rng.integers(1, 20, 8).astype(np.float64))
            losses = torch.from_numpy(rng.uniform(0.0, 3.0, 8))
            low, high = float(losses.min()), float(losses.max())
            stop.observe(t, torch.stack([rows * losses, rows], 1))
        stop.mix(mix_estimates(w, stop.estimate, everyone), torch.zeros(8, dtype=torch.bool), t)
        if stop.scored:
            reading = stop.reading()
            assert bool((reading >= low - 1e-6).all() and (reading <= high + 1e-6).all())


def test_a_node_that_skips_a_windows_last_round_still_scores() -> None:
    stop = ValidationStop(1, patience=10, window=10)
    assert not stop.due(8) and stop.due(9)
    stop.observe(9, torch.tensor([[1.0, 1.0]]))
    assert not stop.due(10) and not stop.due(18)
    assert stop.due(21)  # caught up past round 20: it scores now, as its neighbours did
    stop.observe(21, torch.tensor([[1.0, 1.0]]))
    assert not stop.due(28) and stop.due(29)


def test_the_first_round_a_stop_can_come_in() -> None:
    """First reading at the second window's end, then patience in whole windows; a site
    whose patience is 50 on a 60-round window can stop at round 180, not before."""
    assert earliest_stop(60, 50) == 180
    assert earliest_stop(10, 50) == 70
    stop = ValidationStop(1, patience=50, window=60)
    stopped = [
        t + 1
        for t in range(400)
        if stop.due(t) and bool(stop.observe(t, torch.tensor([[1.0, 1.0]]))[0])
    ]
    assert stopped == [180]  # a flat loss: the best is the first reading


def test_no_rows_anywhere_never_stops() -> None:
    stop = ValidationStop(2, patience=10)
    for i in range(20):
        assert not bool(stop.observe((i + 1) * MIN_WINDOW - 1, torch.zeros(2, 2)).any())


def test_a_stop_spreads_over_the_graph_within_its_diameter() -> None:
    n = 7
    w = metropolis_hastings(nx.path_graph(n))
    stop = ValidationStop(n, patience=10)
    stop.stopped[0] = True
    adjacency = torch.from_numpy((w > 0) & ~np.eye(n, dtype=bool))
    everyone = np.ones((n, n), dtype=bool)
    for t in range(n - 1):
        heard = (adjacency & stop.stopped.unsqueeze(0)).any(1)
        stop.mix(mix_estimates(w, stop.estimate, everyone), heard, t)
    assert bool(stop.stopped.all())
    assert stop.stopped_round[1:].tolist() == list(range(1, n))


def test_a_window_is_a_few_mixing_times_of_the_public_graph() -> None:
    ring = metropolis_hastings(nx.cycle_graph(16))
    full = metropolis_hastings(nx.complete_graph(16))
    assert window_rounds(ring) == 60  # 3 / 0.0507, in whole tens
    assert window_rounds(full) == MIN_WINDOW


def test_the_wire_carries_an_estimate_or_a_stop_and_refuses_anything_else() -> None:
    for val in (Validation((12.5, 7.0)), Validation(None)):
        plain = encode_update(4, -1, [])
        payload = encode_update(4, -1, [], val=val)
        assert len(payload) - len(plain) == validation_bytes(val.estimate is None)
        assert decode_update(payload, 4).val == val
    assert decode_update(encode_update(4, -1, []), 4).val is None
    base = msgpack.unpackb(encode_update(4, -1, []))
    for bad in (
        b"\x00" * 4,
        np.array([math.nan, 1.0], "<f4").tobytes(),
        np.array([1.0, -1.0], "<f4").tobytes(),
        np.array([-1e30, 1.0], "<f4").tobytes(),  # would pin a site's best loss below all
        "text",
    ):
        with pytest.raises(MalformedFrameError, match="val"):
            decode_update(msgpack.packb({**base, "val": bad}), 4)


@pytest.mark.parametrize(
    # Each setting must stop within its rounds: rand-k 20% under secure aggregation stops at
    # round 50. Whether a setting stops at all moves with how it mixes: rand-k 10% stopped
    # at 40 while it drew its coordinates afresh each round, and not within 150 rounds
    # once it took them without replacement (its validation loss kept improving).
    ("secure", "compressor", "rounds"),
    [("off", "top-k:0.1", 40), ("plain", "rand-k:0.2", 60)],
)
def test_nodes_stop_where_the_simulator_stops(
    wisconsin16: FederatedData, tmp_path: Path, secure: str, compressor: str, rounds: int
) -> None:
    """Real nodes (memory transport) and the in-process simulator hold back the same rows,
    track the same estimates and stop in the same round: every site stops, and the
    models agree after it. Under secure aggregation the estimates and the stop travel
    inside the sums (node.exchange.secure.validation_tail), and the same holds."""
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, stop_patience=10)
    spec = ConsortiumSpec(
        rounds=rounds, train=train, compressor=compressor, deadline_s=2.0, secure=secure
    )
    data = subset(wisconsin16, 4)
    nodes = memory_nodes(write_consortium(tmp_path, data, spec))
    run_nodes(nodes)
    nodes.sort(key=lambda node: node.index)
    node_stops = [
        [int(str(e["round"])) for e in events(node, "training_stopped")] for node in nodes
    ]
    assert all(len(s) == 1 for s in node_stops), node_stops
    (start,) = events(nodes[0], "start")
    assert start["validation_stop"] == (
        "on: 20% of each site's rows held back, scored every 10 rounds; training stops "
        "10 rounds after the best reading (round 30 at the earliest)"
    )
    cpu = torch.device("cpu")
    run = RunSpec(spec.rounds, spec.model, train, None, spec.seed, cpu, secure=secure)
    sim = Simulation(data, build_topology(spec.topology, 4, spec.seed), run)
    result = sim.run("murmur", parse_compressor(spec.compressor, spec.seed))
    assert result.final["stopped_sites"] == 4
    assert result.final["stop_first"] == min(s[0] for s in node_stops)
    assert result.final["stop_last"] == max(s[0] for s in node_stops) < spec.rounds
    on_nodes = torch.cat([node.state.x for node in nodes])
    in_sim = sim.last_state.x[:, : sim.layout.dim]
    # To float32 summation order, as in tests/test_exchange_conformance.py. (Over many
    # more rounds of mixing only, an order-of-summation difference can flip a near-tie
    # in top-k's choice and the models part by ~1e-4: 60 rounds here.)
    assert float((on_nodes - in_sim).abs().max()) < 1e-5


def test_the_simulator_stops_under_lost_frames_and_a_short_run_keeps_every_row(
    wisconsin16: FederatedData,
) -> None:
    """Frames lost at 30%: the sites still agree to stop (a lost frame's estimate counts
    as the receiver's own), and the models end closer together than without the stop.
    A run too short for any stop to come holds no rows back and reports none."""
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, stop_patience=20)
    faults = FaultConfig(drop=0.3)
    ring = build_topology("ring", 16)

    def run(rounds: int, patience: int) -> dict[str, float | int | None]:
        spec = RunSpec(
            rounds,
            "mlp:32",
            replace(train, stop_patience=patience),
            None,
            0,
            torch.device("cpu"),
            eval_every=rounds,
            faults=faults,
        )
        return (
            Simulation(wisconsin16, ring, spec).run("murmur", parse_compressor("top-k:0.1")).final
        )

    stopped, unstopped = run(600, 20), run(600, 0)
    assert stopped["stopped_sites"] == 16
    assert int(stopped["stop_last"] or 0) - int(stopped["stop_first"] or 0) <= 16  # the diameter
    assert float(stopped["consensus_end"] or 0) < float(unstopped["consensus_end"] or 0)
    short = run(100, 20)  # a 60-round window: the first stop could come at round 180
    assert "stopped_sites" not in short


def test_the_run_says_whether_the_stop_is_on_and_why() -> None:
    ring = metropolis_hastings(nx.cycle_graph(16))  # a 60-round window

    def spec(rounds: int, secure: str = "off", dp: DpConfig | None = None) -> RunSpec:
        cpu = torch.device("cpu")
        return RunSpec(rounds, "mlp:32", TrainConfig(), None, 0, cpu, secure=secure, dp=dp)

    window, text = stop_plan(spec(200), ring)
    assert window == 60 and "round 180 at the earliest" in text
    assert stop_plan(spec(180), ring) == (
        None,
        "off: on this graph the first stop could come at round 180",
    )
    assert stop_plan(spec(200, secure="ckks"), ring)[0] == 60  # the estimate rides in the sums
    dp = DpConfig(epsilon=3.0, delta=1e-5)
    assert "--dp" in stop_plan(spec(200, dp=dp), ring)[1]

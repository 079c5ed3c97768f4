"""The simulator's exchanges behave as the node's: the same consortium run by real nodes
(in-memory transport) and by ``murmur sim``'s batched round ends in the same state, with
the same bytes (sim.conformance)."""

from __future__ import annotations

import pytest

from node.gossip.sparse import Sparse
from node.training.trainer import TrainConfig
from node.wire.frames import Frame
from sim.conformance import (
    Scenario,
    differences,
    run_in_simulator,
    run_on_nodes,
    sum_errors,
    trained_in_simulator,
    trained_on_nodes,
)
from sim.consortium import ConsortiumSpec
from sim.prep import FederatedData
from tests.node_kit import subset

SAME = [
    Scenario(compressor="identity", gamma=1.0),
    Scenario(compressor="top-k:0.1"),
    Scenario(compressor="rand-k:0.1"),
    Scenario(compressor="block-k:0.1"),
    Scenario(compressor="block-k:0.1+q8"),
    Scenario(compressor="top-k:0.05", topology="torus", sites=9, rounds=5),
    Scenario(compressor="rand-k:0.2", topology="regular:3", sites=6, gamma=0.5),
]


@pytest.mark.parametrize("scenario", SAME, ids=lambda s: f"{s.compressor}-{s.topology}-{s.secure}")
def test_simulator_ends_where_the_nodes_end(scenario: Scenario) -> None:
    node = run_on_nodes(scenario)
    sim = run_in_simulator(scenario, node.weights)
    gaps = differences(node, sim)
    assert gaps["x"] < 1e-5 and gaps["xhat"] < 1e-5 and gaps["s"] < 1e-5, gaps
    # Bytes frame for frame: the same frames, the same acknowledgements, the same sizes,
    # round by round.
    assert (node.by_round == sim.by_round).all(), (node.by_round, sim.by_round)
    assert (node.bytes_sent == sim.bytes_sent).all()


def test_secure_simulator_opens_the_sums_the_nodes_open() -> None:
    """Secure aggregation (the plaintext stand-in cipher, so equality is exact): the same
    contributors in the same sums, so the same models, and the same contribution and sum
    frames to the byte (the nodes' bytes by topic come from their audit logs). Receipts
    differ by design: the simulator sends each neighbour one a round, a node sends them
    as its wait goes and exchanges keys before its first round, so their count depends
    on timing (measured: round bytes in all within 5.8-10.9% per site)."""
    scenario = Scenario(compressor="block-k:0.2", secure="plain", rounds=12)
    node = run_on_nodes(scenario)
    sim = run_in_simulator(scenario, node.weights)
    gaps = differences(node, sim)
    assert gaps["x"] < 1e-6 and gaps["xhat"] < 1e-6 and gaps["s"] < 1e-6, gaps
    for topic in ("contrib", "sum"):
        assert node.topic_bytes[topic] == sim.topic_bytes[topic] > 0, topic
    assert (sim.bytes_sent <= node.bytes_sent).all()  # the handshake is the node's alone


def test_running_sums_are_exact_after_losses_in_both() -> None:
    """Frames lost: which round an item lands in differs, what s holds does not."""
    scenario = Scenario(compressor="top-k:0.1", drop=0.2, rounds=8)
    node = run_on_nodes(scenario)
    sim = run_in_simulator(scenario, node.weights)
    assert node.lost > 5 and sim.lost > 5  # frames really were lost, both ways
    assert max(sum_errors(node)) < 1e-5
    assert max(sum_errors(sim)) < 1e-5


@pytest.mark.parametrize(
    ("compressor", "secure"),
    [("identity", "off"), ("top-k:0.1", "off"), ("block-k:0.2+q8", "off"), ("rand-k:0.2", "plain")],
)
def test_simulator_trains_as_the_nodes_do(
    wisconsin16: FederatedData, compressor: str, secure: str
) -> None:
    """The real trainer on real data, both ways: each site's batches, rounding and mixing
    are the same, so the models are (to float summation order); under secure aggregation
    too (sums through the aggregators, the validation tail in every contribution)."""
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")
    spec = ConsortiumSpec(
        rounds=10, train=train, compressor=compressor, deadline_s=2.0, secure=secure
    )
    data = subset(wisconsin16, 4)
    on_nodes = trained_on_nodes(data, spec)
    in_sim = trained_in_simulator(data, spec)
    assert float((on_nodes - in_sim).abs().max()) < 1e-5
    assert float((on_nodes - on_nodes.mean(0)).abs().max()) > 1e-3  # the sites differ


def test_a_frame_from_a_round_ahead_waits_for_its_round(
    wisconsin16: FederatedData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One site trains slowly, so its neighbours mix, train and send their next round
    while it still waits: their frames come a round early. Used at the round they belong
    to, the models are still the simulator's (used at once, they went into the slow
    site's mix of the round before, and the run depended on timing)."""
    import time

    from node.exchange.plaintext import PlaintextExchange
    from node.learner import Learner

    train_and_compress = Learner.train_and_compress
    slow: list[Learner] = []

    def slowly(self: Learner, t: int) -> tuple[float, Sparse]:
        if not slow:
            slow.append(self)  # the first site to train is the slow one
        if self is slow[0]:
            time.sleep(0.15)  # in the training thread: the others go on
        return train_and_compress(self, t)

    early: list[int] = []
    handle = PlaintextExchange.handle

    def counting(self: PlaintextExchange, frame: Frame) -> None:
        early.append(frame.round > self.host.round)
        handle(self, frame)

    monkeypatch.setattr(Learner, "train_and_compress", slowly)
    monkeypatch.setattr(PlaintextExchange, "handle", counting)
    train = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")
    spec = ConsortiumSpec(rounds=8, train=train, compressor="top-k:0.1", deadline_s=5.0)
    data = subset(wisconsin16, 4)
    on_nodes = trained_on_nodes(data, spec)
    assert sum(early) >= 4, early  # frames really came a round early
    in_sim = trained_in_simulator(data, spec)
    assert float((on_nodes - in_sim).abs().max()) < 1e-5

"""One conformance kit that pins the simulator's exchanges to the node's.

The same consortium (members, graph, compressor, step size, mode) with the same local
steps runs twice: as real :class:`node.runtime.Node` objects on the in-memory transport
(their whole round loop: frames, acknowledgements, receipts, checkpoints), and as the
simulator's :class:`sim.exchange.BatchedExchange` driven by
:func:`sim.exchange.gossip_round`, as ``murmur sim`` runs it. Without faults both must end
with the same x, x̂ and s at every site (to float rounding; CKKS adds its own noise), and
the simulator's bytes must be what the nodes put on the wire. With frames lost, timing
decides which round an item lands in, so the kit checks what both must keep whatever the
timing: every running sum s_i = Σ_j W_ij x̂_j once what is owed has been delivered.

The local step needs no data and draws nothing at random: each site pulls its model
towards its own target c_i (one SGD step on ½‖x − c_i‖² a round), so every difference
between the two runs is the exchange's. :func:`trained_on_nodes` and
:func:`trained_in_simulator` then run the real trainer on real data both ways: row k of
the simulator's batched trainer samples what site k's node samples (node.training.sampling), so
the models must agree too. ``tests/test_exchange_conformance.py`` runs the kit.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from crypto.cipher import cipher_by_name
from node.audit.check import frames_of, read_entries
from node.audit.log import LOG_FILE
from node.exchange.secure.validation_tail import with_tail_room
from node.gossip.choco import ChocoState
from node.gossip.registry import parse_compressor
from node.gossip.step_guard import StepGuard, step_guard
from node.runtime import Node
from node.state.membership import Membership
from node.training.custom import TrainingLoop
from node.transport.faulty import FaultyTransport
from sim.consortium import ConsortiumSpec, write_consortium
from sim.engine import Simulation
from sim.exchange import BatchedExchange, gossip_round
from sim.faults import FaultConfig, FaultModel
from sim.network import SimNetwork
from sim.own_loops import loop_nodes, memory_nodes, run_nodes
from sim.prep import FederatedData
from sim.results import RunSpec
from sim.secure_network import SecureSimNetwork
from topology import build_topology


@dataclass(frozen=True)
class Scenario:
    """One consortium to run both ways."""

    sites: int = 4
    topology: str = "ring"
    compressor: str = "top-k:0.1"
    gamma: float | None = None  # None: auto, with the runtime guard
    secure: str = "off"  # off | plain | ckks
    rounds: int = 6
    dim: int = 300
    seed: int = 0
    drop: float = 0.0  # frames lost (the nodes' fault-injecting transport)

    def gossip(self) -> dict[str, Any]:
        keys: dict[str, Any] = {"compressor": self.compressor, "secure": self.secure}
        if self.gamma is not None:
            keys["gamma"] = self.gamma
        return keys


@dataclass(frozen=True)
class Outcome:
    """Every site's CHOCO state after the run, in the members' order, and its bytes."""

    x: torch.Tensor  # (N, D)
    xhat: torch.Tensor
    s: torch.Tensor
    bytes_sent: NDArray[np.float64]  # (N,) in all
    by_round: NDArray[np.float64]  # (R, N) sent by the end of each round
    weights: NDArray[np.float64]  # the W both ran with
    lost: int  # frames the faults lost (nodes) or that missed the deadline (simulator)
    topic_bytes: dict[str, float]  # all sites' bytes by frame topic


class _Pull(nn.Module):
    """A model that is only its parameters: its output is its own vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.w.expand(len(inputs), -1)


def _pull_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output - target) ** 2).sum() / len(output)


def _loops(scenario: Scenario) -> list[TrainingLoop]:
    """Site i's loop: one SGD step (lr 0.1) towards its own target c_i each round."""
    loops = []
    for i in range(scenario.sites):
        draw = torch.Generator().manual_seed(scenario.seed * 1000 + i)
        target = 2.0 * torch.randn(1, scenario.dim, generator=draw)
        loops.append(
            TrainingLoop(
                lambda: _Pull(scenario.dim),
                [(torch.zeros(1, 1), target)],
                loss_fn=_pull_loss,
                optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            )
        )
    return loops


def run_on_nodes(scenario: Scenario) -> Outcome:
    """The scenario on real nodes (one event loop, the in-memory transport)."""
    with tempfile.TemporaryDirectory() as scratch:
        faults = {"drop": scenario.drop} if scenario.drop else None
        built = loop_nodes(
            _loops(scenario),
            Path(scratch) / "consortium",
            rounds=scenario.rounds,
            topology=scenario.topology,
            seed=scenario.seed,
            gossip=scenario.gossip(),
            faults=faults,
        )
        built.sort(key=lambda site: site[1].index)
        nodes = [node for _, node, _ in built]
        asyncio.run(run_nodes(nodes))
        if scenario.secure == "off":
            _deliver_owed(nodes)
        topics: Counter[str] = Counter()
        for node in nodes:
            for entry in read_entries(node.config.site.state_dir / LOG_FILE):
                for frame in frames_of(entry):
                    if frame["dir"] == "sent":
                        topics[frame["topic"]] += frame["bytes"]
        by_round = [
            [
                float(e["bytes_sent"])
                for e in map(json.loads, log.getvalue().splitlines())
                if e["event"] == "round"
            ]
            for _, _, log in built
        ]
        return Outcome(
            x=torch.cat([n.state.x for n in nodes]),
            xhat=torch.cat([n.state.xhat for n in nodes]),
            s=torch.cat([n.state.s for n in nodes]),
            bytes_sent=np.array([float(n.bytes_sent) for n in nodes]),
            by_round=np.array(by_round).T,
            weights=Membership.of(nodes[0].config).matrix(),
            lost=sum(
                n.transport.dropped for n in nodes if isinstance(n.transport, FaultyTransport)
            ),
            topic_bytes={k: float(v) for k, v in topics.items()},
        )


def _deliver_owed(nodes: list[Node]) -> None:
    """What the simulator's ``finish`` does, on nodes that have stopped: every item still
    in a sender's backlog goes to its receiver through the receiver's own inbound link.
    (A node stops lingering when it owes nothing and no neighbour is behind; a neighbour
    whose last frames were lost may still owe it items, which a longer run would resend.)"""
    by_id = {node.identity.peer_id: node for node in nodes}
    for sender in nodes:
        me = sender.identity.peer_id
        for peer, link in sender.links.out.items():
            receiver = by_id[peer]
            with torch.no_grad():
                receiver.links.inbound[me].accept(list(link.pending), receiver.state.s[0])


class _Rows:
    """The sites' loops as one batched trainer over the rows of ``params``."""

    def __init__(self, loops: list[TrainingLoop], seed: int) -> None:
        self.loops = loops
        self.params = torch.stack([loop.bind(seed) for loop in loops])

    def train(self) -> None:
        for i, loop in enumerate(self.loops):
            loop.params.copy_(self.params[i : i + 1])
            loop.train()
            self.params[i].copy_(loop.params[0])


def run_in_simulator(scenario: Scenario, weights: NDArray[np.float64]) -> Outcome:
    """The scenario on the simulator's batched exchange, rounds as ``murmur sim`` runs
    them (:func:`gossip_round`), with the nodes' W."""
    n = scenario.sites
    trainer = _Rows(_loops(scenario), scenario.seed)
    state = ChocoState.start(trainer.params, trainer.params[0].clone())
    compressor = with_tail_room(
        parse_compressor(scenario.compressor, scenario.seed), scenario.secure, scenario.seed
    )
    faults = (
        FaultModel(FaultConfig(drop=scenario.drop), n, scenario.seed) if scenario.drop else None
    )
    exchange: BatchedExchange
    if scenario.secure == "off":
        exchange = SimNetwork(weights, faults, torch.device("cpu"))
    else:
        cipher = cipher_by_name(scenario.secure)
        exchange = SecureSimNetwork(weights, faults, cipher, state.xhat[0], scenario.seed)
    step: StepGuard | float = (
        step_guard(compressor, scenario.dim, weights, n)
        if scenario.gamma is None
        else scenario.gamma
    )
    everyone = np.ones(n, dtype=bool)
    sent = np.zeros(n)
    by_round = []
    lost = 0
    for t in range(scenario.rounds):
        trainer.train()
        with torch.no_grad():
            traffic = gossip_round(exchange, t, state, compressor, step, everyone, everyone)
        sent += traffic.bytes_sent
        by_round.append(sent.copy())
        lost += traffic.missed
    exchange.finish(state.s)
    x, xhat, s = state.x.clone(), state.xhat.clone(), state.s.clone()
    if isinstance(exchange, SecureSimNetwork):
        topics = {k: float(v) for k, v in exchange.topic_bytes.items()}
    else:
        topics = {"update": float(sent.sum())}
    return Outcome(x, xhat, s, sent, np.array(by_round), weights, lost, topics)


def sum_errors(outcome: Outcome) -> NDArray[np.float64]:
    """(N,) each site's ‖s_i − Σ_j W_ij x̂_j‖ relative to ‖s_i‖: zero when nothing is
    owed (plaintext backlogs; under secure aggregation s holds what the receivers could
    open, which the outboxes track instead)."""
    w = torch.from_numpy(outcome.weights).to(outcome.xhat.dtype)
    expected = w @ outcome.xhat
    error = (outcome.s - expected).norm(dim=1) / outcome.s.norm(dim=1).clamp_min(1e-12)
    result: NDArray[np.float64] = error.double().numpy()
    return result


def differences(node: Outcome, sim: Outcome) -> dict[str, float]:
    """How far the simulator's run is from the nodes': the largest relative difference of
    x, x̂ and s over sites; of the bytes sent in all (``bytes``) and of those sent in the
    rounds after the first (``round_bytes``: without what a node sends before its first
    round and after its last, the secure mode's key handshake and closing receipts)."""

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max())

    def gap(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
        return float((np.abs(b - a) / np.maximum(a, 1.0)).max())

    return {
        "x": relative(node.x, sim.x),
        "xhat": relative(node.xhat, sim.xhat),
        "s": relative(node.s, sim.s),
        "bytes": gap(node.bytes_sent, sim.bytes_sent),
        "round_bytes": gap(
            node.by_round[-1] - node.by_round[0], sim.by_round[-1] - sim.by_round[0]
        ),
    }


def trained_on_nodes(data: FederatedData, spec: ConsortiumSpec) -> torch.Tensor:
    """(N, D) the models real nodes (memory transport) end with, from ``murmur sim
    --backend process``'s own consortium files for ``data`` and ``spec``."""
    with tempfile.TemporaryDirectory() as scratch:
        nodes = memory_nodes(write_consortium(Path(scratch), data, spec))
        asyncio.run(run_nodes(nodes))
        nodes.sort(key=lambda node: node.index)
        return torch.cat([node.state.x for node in nodes])


def trained_in_simulator(data: FederatedData, spec: ConsortiumSpec) -> torch.Tensor:
    """(N, D) the models ``murmur sim`` (in-process) ends with for the same run."""
    cpu = torch.device("cpu")
    run = RunSpec(
        spec.rounds, spec.model, spec.train, spec.gamma, spec.seed, cpu, secure=spec.secure
    )
    sim = Simulation(data, build_topology(spec.topology, len(data.train), spec.seed), run)
    sim.run(spec.method, parse_compressor(spec.compressor, spec.seed))
    return sim.last_state.x[:, : sim.layout.dim].clone()

"""Regression tests for the security review's findings: each failed before its fix.

A member site (or its stolen key) is the attacker here: it passes the Noise handshake and
signs its frames, so everything below is about what a valid peer can do to us."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import stat
import time
import warnings
from collections import Counter
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node.errors import (
    ConfigError,
    EarlyStopError,
    FrameError,
    FutureFrameError,
    NodeCrashedError,
    PeerUnreachableError,
)
from node.exchange.plan import sign_contributors
from node.runtime import Node
from node.state import checkpoint
from node.state.backlog import Item
from node.state.site_secrets import SEED_FILE, dp_seed
from node.training.dp.engine import DpTrainer
from node.training.dp.row import SECURE_RNG_WARNING
from node.training.dp_config import DpConfig
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, StackedData, TrainConfig
from node.transport.memory import MemoryNetwork, MemoryTransport
from node.wire.frames import Frame, FrameGuard, decode, seal
from node.wire.sealed import decode_receipt, pack
from node.wire.update import Validation, encode_update
from sim.consortium import ConsortiumSpec, write_consortium
from sim.own_loops import memory_nodes
from sim.prep import FederatedData
from tests.node_kit import events, run_nodes, subset

TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")
DP = DpConfig(epsilon=3.0, delta=1e-3, clip=1.0, noise_multiplier=1.0, weight="equal")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dp_configs(data: FederatedData, out: Path, rounds: int = 2, dp: DpConfig = DP) -> list[Path]:
    spec = ConsortiumSpec(
        rounds=rounds, train=TRAIN, compressor="block-k:0.3:64", deadline_s=1.0, dp=dp
    )
    return write_consortium(out, data, spec)


# -- 1. DP noise must not be computable from the config ------------------------------------


def test_dp_noise_seed_is_a_csprng_secret_not_the_config_seed(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """The DP generators' seed comes from a 0600 file of CSPRNG bytes, never from
    ``consortium.seed`` and the site's index; it persists across restarts, and two sites
    built from identical configs get different noise."""
    data = subset(wisconsin16, 3)
    paths = _dp_configs(data, tmp_path / "a")
    nodes = memory_nodes(paths)
    for node in nodes:
        assert node.dp is not None
        row = node.dp.rows[0]
        public = node.config.consortium.seed * 7919 + node.index
        assert row.noise_gen.initial_seed() not in (public, public + 1)
        assert row.sample_gen.initial_seed() not in (public, public + 1)
        seed_file = node.config.site.state_dir / SEED_FILE
        assert _mode(seed_file) == 0o600
        assert str(row.sample_gen.initial_seed()) not in paths[node.index].read_text()
    seeds = {n.dp.rows[0].noise_gen.initial_seed() for n in nodes if n.dp}
    assert len(seeds) == 3
    again = memory_nodes(paths)  # a restart reads the same secret
    assert [n.dp.rows[0].noise_gen.initial_seed() for n in again if n.dp] == [
        n.dp.rows[0].noise_gen.initial_seed() for n in nodes if n.dp
    ]
    # The same configs in a fresh state directory: other secrets, other noise.
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)
    for i in range(3):
        shutil.rmtree(copy / f"node-{i}" / "state")
    fresh = memory_nodes([copy / p.relative_to(tmp_path / "a") for p in paths])
    assert not seeds & {n.dp.rows[0].noise_gen.initial_seed() for n in fresh if n.dp}


def test_a_readable_or_damaged_dp_seed_file_is_refused(tmp_path: Path) -> None:
    seed = dp_seed(tmp_path)
    assert dp_seed(tmp_path) == seed
    path = tmp_path / SEED_FILE
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="group/others can read"):
        dp_seed(tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="damaged"):
        dp_seed(tmp_path)


def test_opacus_secure_rng_warning_is_not_silenced_for_nodes() -> None:
    """Only the simulator (seeding on purpose) hides Opacus' secure-RNG warning."""
    torch.manual_seed(0)
    model = build_model("logistic", 4, 2)
    x0 = FlatLayout.of(model).to_vector(model).detach().unsqueeze(0)
    parts = [(torch.randn(40, 4), torch.randint(0, 2, (40,)))]
    for reproducible, expected in [(False, True), (True, False)]:
        plain = BatchedTrainer(
            model, x0.clone(), StackedData.from_parts(parts, torch.device("cpu")), TRAIN
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            DpTrainer(plain, parts, DP, 10, seed=5, reproducible=reproducible)
        assert any(SECURE_RNG_WARNING in str(w.message) for w in caught) == expected


# -- 8. checkpoints and state directories are private ----------------------------------------


def test_checkpoints_and_state_dir_are_private(wisconsin16: FederatedData, tmp_path: Path) -> None:
    data = subset(wisconsin16, 3)
    paths = _dp_configs(data, tmp_path)
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    for node in nodes:
        state = node.config.site.state_dir
        assert _mode(state) == 0o700
        assert _mode(node.ckpt_path) == 0o600
        assert not any(_mode(p) & 0o077 for p in state.iterdir())


def test_a_stale_world_readable_checkpoint_tmp_file_does_not_leak(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(b"old")
    tmp.chmod(0o644)
    checkpoint.save(target, {"x": torch.zeros(3)})
    assert _mode(target) == 0o600


# -- attacks by a member holding a valid key -------------------------------------------------


def _rogue(network: MemoryNetwork, insider: Node, victim: Node) -> MemoryTransport:
    """A second connection holding ``insider``'s site key (a member, or its stolen key)."""
    rogue = MemoryTransport(network, insider.identity, f"/memory/rogue-{insider.index}")
    rogue.set_peers({victim.identity.peer_id: victim.config.site.listen})
    return rogue


def _consortium(
    data: FederatedData, tmp_path: Path, sites: int, spec: ConsortiumSpec
) -> tuple[MemoryNetwork, list[Node]]:
    network = MemoryNetwork()
    paths = write_consortium(tmp_path, subset(data, sites), spec)
    return network, memory_nodes(paths, network=network)


async def _rogue_started(
    network: MemoryNetwork, insider: Node, victim: Node, at: int
) -> MemoryTransport:
    """The insider's second connection, once the victim has reached round ``at``."""
    rogue = _rogue(network, insider, victim)
    await rogue.start()
    await _when(victim, at)
    return rogue


async def _when(node: Node, round: int) -> None:
    while node.round < round:
        await asyncio.sleep(0.005)


def _run_with(nodes: list[Node], attack: Coroutine[Any, Any, None]) -> None:
    async def run() -> None:
        await asyncio.gather(attack, *(n.run() for n in nodes))

    asyncio.run(run())


def _rounds(node: Node) -> list[int]:
    return [int(e["round"]) for e in events(node, "round")]  # type: ignore[call-overload]


def test_a_far_future_round_moves_no_one(wisconsin16: FederatedData, tmp_path: Path) -> None:
    """A member signs a frame for round 10⁶. Before, the receiver jumped to the end (and
    its neighbours with it); now the frame is refused as ``future`` and every site runs
    every round."""
    rounds = 8
    spec = ConsortiumSpec(rounds=rounds, train=TRAIN, compressor="top-k:0.1", deadline_s=1.0)
    network, nodes = _consortium(wisconsin16, tmp_path, 4, spec)
    victim, insider = nodes[0], nodes[1]

    async def attack() -> None:
        rogue = await _rogue_started(network, insider, victim, 2)
        for far in (10**6, 10**9, rounds):
            payload = encode_update(victim.dim, -1, [])
            await rogue.send(
                victim.identity.peer_id, seal(insider.identity, far, "update", payload)
            )

    _run_with(nodes, attack())
    for node in nodes:
        assert _rounds(node) == list(range(1, rounds + 1))
    assert victim.rejections()["future"] == 3
    (finish,) = events(victim, "finish")
    assert finish["rejected"]["future"] == 3  # type: ignore[index]


def test_a_stop_announced_before_any_site_could_stop_is_refused(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A member announces the consortium's training stop in round 3; the first round any
    site can stop in is 30 (two 10-round windows, then the patience): the frame is
    refused and counted, and the victim trains on until the honest stop."""
    train = replace(TRAIN, stop_patience=10)
    spec = ConsortiumSpec(rounds=32, train=train, compressor="top-k:0.1", deadline_s=1.0)
    network, nodes = _consortium(wisconsin16, tmp_path, 4, spec)
    victim, insider = nodes[0], nodes[1]
    assert victim.learner.earliest_stop() == 30

    async def attack() -> None:
        rogue = await _rogue_started(network, insider, victim, 2)
        payload = encode_update(victim.dim, -1, [], val=Validation(None))
        await rogue.send(victim.identity.peer_id, seal(insider.identity, 2, "update", payload))

    _run_with(nodes, attack())
    assert victim.rejections()["early_stop"] == 1
    stops = [int(str(e["round"])) for e in events(victim, "training_stopped")]
    assert all(r >= 30 for r in stops), stops


def test_a_restarted_site_still_catches_up_to_its_slowest_neighbour() -> None:
    """Catching up follows the slowest live neighbour, a bounded jump at a time."""
    from node.pacing import CATCH_UP_MAX, Pacing

    def next_round(heard: dict[str, int], t: int) -> int:
        links = type("L", (), {"heard": heard, "neighbours": list(heard)})()
        return Pacing(FrameGuard([])).next_round(links, set(), t)

    assert next_round({"a": 12, "b": 9}, 3) == 9
    assert next_round({"a": 10**6, "b": 4}, 3) == 4  # one far claim moves nothing
    assert next_round({"a": 500, "b": 700}, 3) == 500  # two sites say so: all the way
    assert next_round({"a": 10**6}, 3) == 4 + CATCH_UP_MAX  # one site's word: bounded
    assert next_round({"a": -1, "b": 9}, 3) == 4


def test_plaintext_updates_are_refused_in_secure_mode(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Under secure aggregation a neighbour's update never arrives in the clear; before,
    an ``update`` frame went straight into s."""
    spec = ConsortiumSpec(
        rounds=4, train=TRAIN, compressor="block-k:0.3:64", secure="plain", deadline_s=1.0
    )
    network, nodes = _consortium(wisconsin16, tmp_path, 3, spec)
    victim, insider = nodes[0], nodes[1]

    async def attack() -> None:
        rogue = await _rogue_started(network, insider, victim, 1)
        row = torch.full((victim.dim,), 1e6)
        item = Item(0, None, row, reset=True)
        payload = encode_update(victim.dim, -1, [item])
        await rogue.send(
            victim.identity.peer_id, seal(insider.identity, victim.round, "update", payload)
        )

    _run_with(nodes, attack())
    assert float(victim.state.s.abs().max()) < 1e3
    assert _rounds(victim) == [1, 2, 3, 4]
    assert victim.rejections()["frame"] == 1


def _forged_sum(
    victim: Node, insider: Node, round: int, values: np.ndarray, corrupt: bool
) -> bytes:
    """A sum frame as an aggregator would send it, under the victim's real key, with a
    valid signed contributor record claiming both of the victim's neighbours."""
    exchange = victim.secure
    assert exchange is not None
    key = exchange.secret.public
    # Our encrypt refuses values beyond 1e4; a forger adds encryptions up to any sum.
    copies = int(np.ceil(np.abs(values).max() / 1e4)) if np.isfinite(values).all() else 1
    sealed = exchange.cipher.encrypt(values / max(copies, 1), key)
    if copies > 1:
        sealed = exchange.cipher.add([sealed] * copies, key)
    if corrupt:  # framing intact, ciphertext body garbled: only SEAL's parser notices
        chunk = bytearray(sealed.chunks[0])
        middle = len(chunk) // 2
        chunk[middle : middle + 64] = bytes(64)
        sealed = replace(sealed, chunks=(bytes(chunk), *sealed.chunks[1:]))
    data = sealed.to_bytes()
    record = sign_contributors(
        insider.identity,
        victim.identity.peer_id,
        round,
        exchange.neighbours,
        exchange.neighbours,
        data,
        exchange.base,
    )
    return seal(insider.identity, round, "sum", pack(record.sum_fields(data)))


@pytest.mark.parametrize("secure", ["plain", "ckks"])
def test_forged_or_malformed_sums_are_refused_and_the_node_goes_on(
    wisconsin16: FederatedData, tmp_path: Path, secure: str
) -> None:
    """A member aggregator forwards sums that do not decrypt (CKKS: garbled body), hold
    NaN, or hold 1e5 per value. Before, the first crashed the receiver's round with a raw
    error and the others went straight into s; now each is refused and counted."""
    rounds = 6
    spec = ConsortiumSpec(
        rounds=rounds, train=TRAIN, compressor="block-k:0.3:64", secure=secure, deadline_s=1.0
    )
    network, nodes = _consortium(wisconsin16, tmp_path, 3, spec)
    victim, insider = nodes[0], nodes[1]
    exchange = victim.secure
    assert exchange is not None
    bad: list[tuple[np.ndarray, bool]] = []
    for t in range(1, 4):
        n = exchange.slot_count(t)  # the model's values and the validation tail
        if secure == "ckks":
            bad.append((np.full(n, 0.1), True))
        else:
            bad.append((np.full(n, np.nan), False))
        bad.append((np.full(n, 1e5), False))

    async def attack() -> None:
        rogue = await _rogue_started(network, insider, victim, 1)
        for k, (values, corrupt) in enumerate(bad):
            t = 1 + k // 2
            body = _forged_sum(victim, insider, t, values, corrupt)
            await rogue.send(victim.identity.peer_id, body)

    _run_with(nodes, attack())
    assert _rounds(victim) == list(range(1, rounds + 1))
    assert bool(torch.isfinite(victim.state.s).all())
    assert float(victim.state.s.abs().max()) < 1e3
    rejected = victim.rejections()
    # the first sum of each round fails its checks; the second from the same aggregator
    # for the same round is refused before it is opened (one sum per aggregator a round)
    assert rejected.get("sealed_rejected", 0) >= len(bad) // 2 - 1
    assert rejected.get("sealed_rejected", 0) + rejected.get("replayed", 0) >= len(bad) - 1


def test_a_receiver_cannot_pick_its_own_aggregator(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Before, contributors skipped whichever neighbours the receiver's receipt listed as
    absent, so a receiver could name the others absent and have the neighbour of its
    choice aggregate for it. Now only the contributor's own evidence counts: a failed send
    passes that aggregator over for a few rounds, and the part goes to the next at once."""
    from node.exchange.plan import aggregator_order
    from node.exchange.secure import DOWN_ROUNDS

    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 4), tmp_path, rounds=2))
    run_nodes(nodes)  # a 4-ring: site 1 contributes to site 0, whose other neighbour is 3
    contributor, receiver = nodes[1].secure, nodes[0].identity.peer_id
    assert contributor is not None
    around = contributor.neighbours_of(receiver)

    def first(t: int) -> str:
        return aggregator_order(receiver, around, t, contributor.seed)[0]

    t = next(t for t in range(10, 100) if first(t) != contributor.me)
    other = first(t)
    view = contributor.views[receiver]
    contributor.views[receiver] = replace(view, absent=[other])  # the receiver's claim
    assert contributor.aggregator(receiver, t) == other

    sent: list[str] = []

    async def send(peer: str, frame: bytes) -> None:
        if peer == other:
            raise PeerUnreachableError(f"{peer} is down")
        sent.append(peer)

    async def one_round() -> None:
        contributor.send = send
        contributor.contribute(t, contributor.outbox[receiver].copy + 0.5)
        await contributor.send_contributions(t)
        await asyncio.sleep(0)  # let the aggregation start, then end it: no sum is needed
        tasks = list(contributor.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    contributor.views[receiver] = view  # the receiver expects both: we contribute
    asyncio.run(one_round())
    assert contributor.down[other] == t
    assert contributor.me in contributor.buffers[(receiver, t)].parts  # fell back to itself
    later = [u for u in range(t + 1, t + 40) if first(u) == other]
    soon = [u for u in later if u - t < DOWN_ROUNDS]
    after = [u for u in later if u - t >= DOWN_ROUNDS]
    for u in soon:
        assert contributor.aggregator(receiver, u) == contributor.me
    assert after and contributor.aggregator(receiver, after[0]) == other  # tried again


# -- 7. ε follows what was spent, under pinned parameters ------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("delta = 0.001", "delta = 0.01", "delta"),
        ("batch_size = 16", "batch_size = 1", "sample_rate"),
        ("clip = 1.0", "clip = 2.0", "clip"),
    ],
)
def test_dp_parameters_are_pinned_across_restarts(
    wisconsin16: FederatedData, tmp_path: Path, old: str, new: str, field: str
) -> None:
    """A site restarted with a larger δ, a smaller batch (a larger sampling rate) or a
    larger clip would have its ε recomputed too low; it is refused, naming the change."""
    paths = _dp_configs(subset(wisconsin16, 3), tmp_path, rounds=2)
    run_nodes(memory_nodes(paths))
    text = paths[0].read_text()
    assert old in text
    paths[0].write_text(text.replace(old, new))
    (node, *_) = memory_nodes(paths)
    with pytest.raises(ConfigError, match=f"DP parameters changed.*{field}"):
        node.restore()


def test_epsilon_is_read_off_the_accountant_history(wisconsin16: FederatedData) -> None:
    """ε is computed from the (σ, q, steps) the accountant recorded, so steps taken at
    another σ before are charged at that σ."""
    torch.manual_seed(0)
    model = build_model("logistic", 4, 2)
    x0 = FlatLayout.of(model).to_vector(model).detach().unsqueeze(0)
    parts = [(torch.randn(64, 4), torch.randint(0, 2, (64,)))]
    plain = BatchedTrainer(
        model, x0.clone(), StackedData.from_parts(parts, torch.device("cpu")), TRAIN
    )
    trainer = DpTrainer(plain, parts, DP, 10, seed=3, reproducible=True)
    row = trainer.rows[0]
    trainer.train()
    trainer.train()
    assert row.epsilon() == pytest.approx(row.ledger.epsilon(2))
    row.engine.accountant.history.insert(0, (0.5, row.sample_rate, 3))  # as if spent at σ=0.5
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = list(row.engine.accountant.history)
    assert row.epsilon() == pytest.approx(reference.get_epsilon(DP.delta), rel=1e-9)
    assert row.epsilon() > row.ledger.epsilon(5)


# -- 11. a failing task ends the node clearly ------------------------------------------------


def test_an_internal_failure_stops_the_node_with_a_clear_error(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Before, the receive loop was fire-and-forget: an unexpected exception in it left
    the node running but deaf to every neighbour. Now the node stops at the next round
    boundary, logs ``crashed`` and raises, with its checkpoint intact."""
    spec = ConsortiumSpec(rounds=30, train=TRAIN, compressor="top-k:0.1", deadline_s=0.5)
    nodes = memory_nodes(write_consortium(tmp_path, subset(wisconsin16, 3), spec))
    victim = nodes[0]
    calls = 0
    apply = victim.exchange.handle

    def failing(frame: Frame) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("an unexpected bug")
        apply(frame)

    victim.exchange.handle = failing  # type: ignore[method-assign]
    with pytest.raises(NodeCrashedError, match="an unexpected bug"):
        run_nodes(nodes)
    (crashed,) = events(victim, "crashed")
    assert victim.round < 30 and crashed["round"] == victim.round
    saved = checkpoint.load(victim.ckpt_path)
    assert saved is not None and int(saved["round"]) == victim.round


# -- transport-level refusals show in the events ---------------------------------------------


def test_refused_connections_are_counted_in_round_and_finish_events(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    from crypto.identity import SiteIdentity
    from node.errors import PeerUnreachableError

    spec = ConsortiumSpec(rounds=4, train=TRAIN, compressor="top-k:0.1", deadline_s=0.5)
    network = MemoryNetwork()
    nodes = memory_nodes(write_consortium(tmp_path, subset(wisconsin16, 3), spec), network=network)
    victim = nodes[0]

    async def outsiders() -> None:
        await _when(victim, 1)
        for _ in range(20):
            outsider = MemoryTransport(network, SiteIdentity.generate())
            await outsider.start()
            outsider.set_peers({victim.identity.peer_id: victim.config.site.listen})
            with pytest.raises(PeerUnreachableError):
                await outsider.send(victim.identity.peer_id, b"hello")

    _run_with(nodes, outsiders())
    (finish,) = events(victim, "finish")
    assert finish["rejected"] == {"refused_handshake": 20}
    assert events(victim, "round")[-1]["rejected"] == {"refused_handshake": 20}


# -- 9. encryption keys: parameters, loss, rotation ------------------------------------------


@pytest.mark.parametrize(("n", "bits"), [(4096, [50]), (8192, [60, 60]), (4096, [40, 40])])
def test_ckks_keys_with_other_parameters_are_refused(n: int, bits: list[int]) -> None:
    """A key under other parameters would make every contribution to this site another
    size or unreadable: it is refused where it is pinned, naming Murmur's parameters. A
    one-prime 50-bit key has exactly our key's length, so SEAL's own check must catch it."""
    import tenseal.sealapi as seal

    from crypto.ckks import SCRATCH, CkksCipher, _inflated
    from crypto.errors import KeyMismatchError

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, bits))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    public = seal.PublicKey()
    seal.KeyGenerator(context).create_public_key(public)
    data = _inflated(SCRATCH.dump(public), 1 << 21)
    with pytest.raises(KeyMismatchError, match="N = 4096, one 60-bit modulus"):
        CkksCipher().public_key(data)


def _secure_paths(data: FederatedData, out: Path, rounds: int) -> list[Path]:
    spec = ConsortiumSpec(
        rounds=rounds, train=TRAIN, compressor="block-k:0.3:64", secure="plain", deadline_s=1.0
    )
    return write_consortium(out, data, spec)


def test_a_lost_encryption_key_is_not_silently_regenerated(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    paths = _secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2)
    run_nodes(memory_nodes(paths))
    state = tmp_path / "node-0" / "state"
    (state / "encryption.key").unlink()
    with pytest.raises(ConfigError, match=r"missing.*murmur keys rotate"):
        memory_nodes(paths)


def test_a_pinned_key_this_node_cannot_use_names_the_unpin(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A checkpoint can pin a key made under other cipher parameters (an earlier Murmur's
    CKKS keys): the restart stops with the peer and the command, and once unpinned the
    site starts and pins the key its neighbour presents."""
    from node.cli import main
    from node.key_admin import CHECKPOINT_FILE

    paths = _secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2)
    first = memory_nodes(paths)
    run_nodes(first)
    peer = first[1].identity.peer_id
    ckpt = tmp_path / "node-0" / "state" / CHECKPOINT_FILE
    saved = checkpoint.load(ckpt)
    assert saved is not None
    saved["exchange"]["keys"][peer] = b"\x00" * 7
    checkpoint.save(ckpt, saved)
    with pytest.raises(ConfigError, match=f"pins an encryption key for {peer}.*unpin --peer"):
        run_nodes(memory_nodes(paths))
    assert main(["keys", "unpin", "--config", str(paths[0]), "--peer", peer]) == 0
    for path in paths:
        path.write_text(path.read_text().replace("rounds = 2", "rounds = 4"))
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    assert nodes[0].secure is not None and peer in nodes[0].secure.keys


def test_key_rotation_procedure(wisconsin16: FederatedData, tmp_path: Path) -> None:
    """rotate on the site, unpin on its neighbours, restart: the consortium goes on with
    the new key; without the unpin the neighbours refuse it."""
    from node.cli import main

    paths = _secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2)
    run_nodes(memory_nodes(paths))
    old = (tmp_path / "node-0" / "state" / "encryption.key").read_bytes()
    assert main(["keys", "rotate", "--config", str(paths[0])]) == 0
    state = tmp_path / "node-0" / "state"
    (retired,) = state.glob("encryption.key.retired-*")
    assert retired.read_bytes() == old and _mode(retired) == 0o600
    assert _mode(state / "encryption.key") == 0o600
    for path in paths:
        path.write_text(path.read_text().replace("rounds = 2", "rounds = 4"))
    refused = memory_nodes(paths)
    run_nodes(refused)
    assert refused[1].rejections().get("key_mismatch", 0) > 0
    peer = refused[0].identity.peer_id
    for path in paths[1:]:
        assert main(["keys", "unpin", "--config", str(path), "--peer", peer]) == 0
    assert main(["keys", "unpin", "--config", str(paths[1]), "--peer", peer]) == 2  # gone
    for path in paths:
        path.write_text(path.read_text().replace("rounds = 4", "rounds = 7"))
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    new_id = nodes[0].secure.secret.public.key_id  # type: ignore[union-attr]
    for node in nodes[1:]:
        assert node.secure is not None and node.secure.keys[peer].key_id == new_id
        assert "key_mismatch" not in node.rejections()
        assert [e["missed"] for e in events(node, "round")][-2:] == [0, 0]
    # Every step is in the sites' signed audit logs, and the logs still verify.
    from node.audit.check import read_entries, verify

    def kinds(i: int) -> list[tuple[str, dict[str, object]]]:
        log = tmp_path / f"node-{i}" / "state" / "audit.log"
        assert verify(log, nodes[i].identity.peer_id).ok
        return [(str(e["kind"]), e["data"]) for e in read_entries(log)]

    rotated = [d for k, d in kinds(0) if k == "key_rotated"]
    assert rotated == [{"key_id": new_id.hex(), "retired": retired.name}]
    for i in (1, 2):
        mine = kinds(i)
        unpinned = next(n for n, (k, _) in enumerate(mine) if k == "key_unpinned")
        assert mine[unpinned][1] == {"peer": peer}
        assert any(
            k == "key_pinned" and d["peer"] == peer and d["key_id"] == new_id.hex()
            for k, d in mine[unpinned:]
        )
    # Beside a running node the key tools refuse, naming the holder.
    from node.state.lock import state_lock

    with state_lock(tmp_path / "node-0" / "state"):
        assert main(["keys", "rotate", "--config", str(paths[0])]) == 2
        with pytest.raises(ConfigError, match=r"in use by a running node \(pid \d+\)"):
            memory_nodes(paths[:1])[0].run().send(None)


# -- 6. a node restarted without its checkpoint ----------------------------------------------


def _exact(nodes: list[Node]) -> None:
    """Every s_i equals Σ_j W_ij x̂_j (the ring of the consortium writer)."""
    from topology import build_topology

    w = torch.from_numpy(build_topology("ring", len(nodes)).matrix(0)).float()
    expected = w @ torch.cat([n.state.xhat for n in nodes])
    for i, node in enumerate(nodes):
        torch.testing.assert_close(node.state.s[0], expected[i], atol=1e-5, rtol=1e-5)


def _restart_site_1_from_nothing(
    data: FederatedData, tmp_path: Path, spec: ConsortiumSpec, rounds: int
) -> tuple[list[Node], list[Node]]:
    """Run a 4-ring, delete site 1's checkpoint, run all to ``rounds``: (first, second) run."""
    paths = write_consortium(tmp_path, subset(data, 4), spec)
    first = memory_nodes(paths)
    run_nodes(first)
    (tmp_path / "node-1" / "state" / "checkpoint.pt").unlink()
    for path in paths:
        path.write_text(path.read_text().replace(f"rounds = {spec.rounds}", f"rounds = {rounds}"))
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    return first, nodes


def test_a_neighbour_restarted_from_nothing_resets_its_links(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Site 1 loses its checkpoint and starts from nothing. Before, its new items (seq 0
    again) were taken as duplicates by its neighbours, whose totals for it stayed those of
    its previous life: every running sum was wrong from then on. Now its new incarnation
    id resets both directions of each link and the sums are exact again."""
    spec = ConsortiumSpec(rounds=6, train=TRAIN, compressor="top-k:0.2", deadline_s=0.5)
    first, nodes = _restart_site_1_from_nothing(wisconsin16, tmp_path, spec, 14)
    _exact(first)
    assert nodes[1].incarnation != first[1].incarnation
    assert nodes[0].incarnation == first[0].incarnation  # restored from its checkpoint
    for neighbour in (nodes[0], nodes[2]):
        (reset,) = events(neighbour, "incarnation")
        assert reset["peer"] == nodes[1].identity.peer_id
    _exact(nodes)


@pytest.mark.parametrize("secure", ["plain", "ckks"])
def test_a_secure_neighbour_restarted_from_nothing_gets_its_sums_rebased(
    wisconsin16: FederatedData, tmp_path: Path, secure: str
) -> None:
    """Under secure aggregation nobody holds a neighbour's copy alone, so its sum cannot
    be patched link by link: before, a site started over without its checkpoint had its
    contributions (against a fresh x̂₀ copy) added to sums built from its lost copies, and
    every sum around it stayed wrong. Now its neighbours rebase their sums at x̂₀ and every
    contributor to them starts its copy over, through sums only, and s is exact again."""
    from tests.test_secure_node import _sums_match_the_link_copies

    spec = ConsortiumSpec(
        rounds=5, train=TRAIN, compressor="block-k:0.3:64", secure=secure, deadline_s=1.0
    )
    _, nodes = _restart_site_1_from_nothing(wisconsin16, tmp_path, spec, 14)
    restarted = nodes[1].identity.peer_id
    for neighbour in (nodes[0], nodes[2]):
        (reset,) = events(neighbour, "incarnation")
        assert reset["peer"] == restarted
        assert neighbour.secure is not None and neighbour.secure.epoch == 1
    assert not events(nodes[3], "incarnation")  # not a neighbour of site 1: no rebase
    _sums_match_the_link_copies(nodes)
    assert all(len(_rounds(n)) >= 5 for n in nodes)
    # The copies started over at x̂₀ have been filled in again, slot by slot, through sums.
    for contributor in (nodes[0], nodes[2]):
        assert contributor.secure is not None
        xhat, copy = contributor.state.xhat[0], contributor.secure.outbox[restarted].copy
        assert float((xhat - copy).norm() / xhat.norm()) < 0.2


def test_a_neighbour_changing_its_incarnation_again_and_again_is_refused(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Each new incarnation of a neighbour costs us a rebase of our sum; a member naming a
    new one in every receipt is refused after MAX_INCARNATIONS, and an id it had before is
    stale."""
    from node.errors import StaleFrameError
    from node.wire.sealed import basis
    from node.wire.update import MAX_INCARNATIONS

    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    victim, insider = nodes[0].secure, nodes[1]
    assert victim is not None and insider.secure is not None
    epoch = victim.epoch

    def receipt(inc: bytes) -> Frame:
        insider.secure.inc = inc  # type: ignore[union-attr]
        payload = insider.secure._receipt(victim.me)  # type: ignore[union-attr]
        return decode(seal(insider.identity, victim.round, "receipt", payload))

    async def flip() -> list[str]:
        refused = []
        for k in range(MAX_INCARNATIONS + 4):
            try:
                victim.handle(receipt(bytes([k + 1]) * 8))
            except StaleFrameError as exc:
                refused.append(str(exc))
        with pytest.raises(StaleFrameError, match="previous life"):
            victim.handle(receipt(bytes([1]) * 8))
        return refused

    refused = asyncio.run(flip())
    assert victim.epoch == epoch + MAX_INCARNATIONS
    assert len(refused) == 4 and all("too often" in r for r in refused)
    assert victim.bases[insider.identity.peer_id] != basis(bytes([20]) * 8, 0)


def test_dp_budget_survives_a_lost_checkpoint_and_the_ledger_is_required(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """The privacy ledger (append-only, 0600) keeps ε when the checkpoint is lost; a
    checkpoint that spent budget without the ledger is refused."""
    loose = replace(DP, epsilon=50.0, rounds=3)
    paths = _dp_configs(subset(wisconsin16, 3), tmp_path, rounds=3, dp=loose)
    first = memory_nodes(paths)
    run_nodes(first)
    spent = first[0].learner.eps_spent
    assert spent > 0
    state = tmp_path / "node-0" / "state"
    ledger = state / "privacy.ledger"
    assert _mode(ledger) == 0o600 and len(ledger.read_text().splitlines()) == 3
    (state / "checkpoint.pt").unlink()
    again = memory_nodes(paths)
    first_noise = again[0].dp.rows[0].noise_gen.initial_seed()  # type: ignore[union-attr]
    assert not again[0].restore()
    again[0].learner.reconcile_ledger(resumed=False)
    assert again[0].learner.eps_spent == pytest.approx(spent)  # not zero
    # ... and fresh generators: the first life's noise is never replayed on a new model
    assert again[0].dp.rows[0].noise_gen.initial_seed() != first_noise  # type: ignore[union-attr]
    moved = ledger.with_name("elsewhere")
    (tmp_path / "node-1" / "state" / "privacy.ledger").rename(moved)
    node = memory_nodes(paths)[1]
    assert node.restore()
    with pytest.raises(ConfigError, match=r"privacy ledger .* missing"):
        node.learner.reconcile_ledger(resumed=True)


# -- chaos: a member attacks for the whole run -----------------------------------------------


def _honest_finish(
    out: Path, hostile: int
) -> tuple[dict[int, list[int]], list[float], dict[int, dict[str, int]]]:
    import json

    timeline = [json.loads(x) for x in (out / "timeline.jsonl").read_text().splitlines()]
    missed: dict[int, list[int]] = {}
    accuracy: list[float] = []
    rejected: dict[int, dict[str, int]] = {}
    for e in timeline:
        if e.get("node") == hostile:
            continue
        if e["event"] == "round":
            missed.setdefault(e["node"], []).append(e["missed"])
        if e["event"] == "finish":
            accuracy.append(float(e["accuracy"]))
            rejected[e["node"]] = e["rejected"]
    return missed, accuracy, rejected


@pytest.mark.slow
def test_chaos_one_member_attacks_all_run_and_the_others_do_not_notice(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Eight real node processes over libp2p; site 3 holds a valid key and, besides
    gossiping, follows every frame with every attack (tests/hostile_node.py). The honest
    sites run every round, full, and end within 1 point of the attack-free run.

    The deadline is long (5 s) so that what is compared is the attack, not the machine: a
    round waits only until every neighbour's frame is in, so a long deadline costs nothing
    while frames arrive, and with 2 s eight processes on two busy cores once let one honest
    frame in 30 rounds come late in the attacked run and not in the calm one."""
    from sim.process import run_processes

    rounds, hostile = 30, 3
    spec = ConsortiumSpec(
        rounds=rounds, train=TRAIN, compressor="top-k:0.1", deadline_s=5.0, eval_every=rounds
    )
    data = subset(wisconsin16, 8)
    run_processes(tmp_path / "calm", data, spec, [])
    run_processes(tmp_path / "chaos", data, spec, [], modules={hostile: "tests.hostile_node"})
    calm_missed, calm_acc, _ = _honest_finish(tmp_path / "calm", hostile)
    missed, acc, rejected = _honest_finish(tmp_path / "chaos", hostile)
    assert sorted(missed) == [n for n in range(8) if n != hostile]
    for node, per_round in missed.items():
        assert len(per_round) == rounds, f"site {node} did not run every round"
        assert sum(per_round[2:]) <= sum(calm_missed[node][2:]), f"site {node} missed rounds"
    assert abs(np.mean(acc) - np.mean(calm_acc)) <= 0.01
    for victim in (2, 4):  # the hostile site's neighbours saw, and counted, every attack
        counts = rejected[victim]
        for reason in ("future", "malformed", "replayed", "forged", "frame"):
            assert counts.get(reason, 0) >= rounds // 2, (victim, reason, counts)


# -- 4. memory a member can take -------------------------------------------------------------


def test_a_flooding_peer_is_held_to_its_queue_share_and_times_out() -> None:
    """Before, the receive queue was unbounded: a member could fill our memory faster
    than we consume. Now each peer may hold two maximal frames in it; past that its
    sends wait (backpressure) and then fail, and the other peers still get through."""
    from crypto.identity import SiteIdentity
    from node.errors import PeerUnreachableError

    async def scenario() -> tuple[int, int, bool]:
        network = MemoryNetwork()
        keys = [SiteIdentity.generate() for _ in range(3)]
        victim, flooder, honest = (
            MemoryTransport(network, k, max_frame_bytes=1000, timeout_s=0.3) for k in keys
        )
        for t in (victim, flooder, honest):
            await t.start()
        victim.set_peers({flooder.peer_id: flooder.listen_addr, honest.peer_id: honest.listen_addr})
        for t in (flooder, honest):
            t.set_peers({victim.peer_id: victim.listen_addr})
        sent = 0
        with pytest.raises(PeerUnreachableError, match="read nothing"):
            for _ in range(100):
                await flooder.send(victim.peer_id, bytes(900))
                sent += 1
        await honest.send(victim.peer_id, b"still heard")  # not crowded out
        held = victim.queued_bytes()
        got = []
        async for received in victim.incoming():
            got.append(received.peer)
            if received.peer == honest.peer_id:
                break
        return sent, held, honest.peer_id in got

    sent, held, heard = asyncio.run(scenario())
    assert sent == 2 and held <= 2 * 1000 + len(b"still heard") and heard


def test_a_receipt_naming_another_key_buys_at_most_one_key_resend_per_deadline(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Before, every receipt that named a wrong key id made us send our ~262 KB CKKS
    key again: a cheap amplification for a member."""
    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    victim, insider = nodes[0].secure, nodes[1]
    assert victim is not None and insider.secure is not None
    resent: list[str] = []

    async def count(peer: str, round: int) -> None:
        resent.append(peer)

    basis = insider.secure.base
    victim.send_key = count  # type: ignore[method-assign]
    victim._key_sent.clear()  # the run itself may have just sent one: start the clock here

    async def flood() -> None:
        payload = pack(
            {
                "included": [],
                "through": -1,
                "ack": -1,
                "key": b"\x00" * 16,
                "absent": [],
                "ready": True,
                "waiting": False,
                "base": basis,
                "echo": victim.inc,
                "stopped": False,
            }
        )
        for _ in range(50):
            victim.handle(decode(seal(insider.identity, victim.round, "receipt", payload)))
        await asyncio.sleep(0.05)

    asyncio.run(flood())
    assert resent == [insider.identity.peer_id]


def test_a_secure_receipt_announcing_an_early_stop_is_refused(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Under secure aggregation a site's stop travels in its signed receipts
    (node.exchange.secure.validation_tail): one announced before the first round any site
    can stop in is refused as ``early_stop``, with its verdicts; a later one is kept as
    that neighbour's stop, from its round on."""
    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    victim, insider = nodes[0].secure, nodes[1]
    assert victim is not None and insider.secure is not None
    victim.earliest_stop = 30

    def receipt(round: int) -> Frame:
        fields = decode_receipt(insider.secure._receipt(victim.me))  # type: ignore[union-attr]
        payload = pack(
            {
                "included": [],
                "through": -1,
                "ack": -1,
                "key": fields.key_id,
                "absent": [],
                "ready": True,
                "waiting": False,
                "base": fields.base,
                "echo": fields.echo,
                "stopped": True,
            }
        )
        return decode(seal(insider.identity, round, "receipt", payload))

    with pytest.raises(EarlyStopError):
        victim.handle(receipt(2))
    assert insider.identity.peer_id not in victim.stopped_at
    victim.handle(receipt(40))
    assert victim.stopped_at[insider.identity.peer_id] == 40


def test_a_secure_receipt_says_stopped_only_from_the_round_its_site_stopped(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A stop decided at round 39's end (the site trains no more from round 40) must not
    go out on a receipt stamped 39, which may leave after it: its neighbours would stop a
    round before a plaintext frame, or the simulator, tells them."""
    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    site, peer = nodes[0].secure, nodes[1].identity.peer_id
    assert site is not None
    site.earliest_stop = 30

    def says(round: int) -> bool:
        return decode_receipt(site._receipt(peer, round=round)).stopped

    assert not any(says(t) for t in (38, 39, 40, 41))  # still training
    site.stopped_from = lambda: 40
    assert [says(t) for t in (38, 39, 40, 41)] == [False, False, True, True]


# -- 10. transport deadlines are about progress ----------------------------------------------


class _SlowStream:
    """A stream that yields ``chunk`` bytes every ``gap_s`` seconds, then stalls."""

    def __init__(self, total: int, chunk: int, gap_s: float) -> None:
        self.left, self.chunk, self.gap_s = total, chunk, gap_s

    async def read(self, n: int) -> bytes:
        import trio

        if self.left <= 0:
            await trio.sleep_forever()
        await trio.sleep(self.gap_s)
        size = min(n, self.chunk, self.left)
        self.left -= size
        return b"x" * size


def test_a_large_body_on_a_slow_link_arrives_and_a_stalled_one_returns_short() -> None:
    """Before, a whole body had to arrive within one timeout whatever its size (a dense
    reset never made it over a slow link and was retried forever), and a read that
    timed out could hand back the previous frame's body. Now each chunk has the timeout."""
    import trio

    from node.transport.p2p.streams import read_exactly

    async def scenario() -> tuple[int, int]:
        slow = _SlowStream(total=40, chunk=4, gap_s=0.02)  # 0.2 s in all, 0.02 s a chunk
        whole = await read_exactly(slow, 40, timeout_s=0.1)  # type: ignore[arg-type]
        stalled = _SlowStream(total=8, chunk=4, gap_s=0.02)
        short = await read_exactly(stalled, 40, timeout_s=0.1)  # type: ignore[arg-type]
        return len(whole), len(short)

    assert trio.run(scenario) == (40, 8)


def test_a_torn_ledger_line_is_not_joined_to_the_next(tmp_path: Path) -> None:
    from node.state.privacy_ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path)
    ledger.append(0, [(1.0, 0.5, 1)])
    with open(ledger.path, "a") as handle:
        handle.write('{"round": 1, "hist')  # a crash mid-append
    ledger.append(1, [(1.0, 0.5, 2)])
    assert ledger.last() == [(1.0, 0.5, 2)]


def test_a_slow_reader_does_not_stretch_its_neighbours_rounds(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A member that reads just under the transport timeout keeps our send to it going for
    several timeouts. Before, every round awaited that send, so the member set the pace of
    all its neighbours; now a round waits for it at most a deadline, nothing more goes to
    it while it is still being written, and its items wait in the backlog."""
    deadline, delay, rounds = 0.2, 1.5, 8
    spec = ConsortiumSpec(rounds=rounds, train=TRAIN, compressor="top-k:0.1", deadline_s=deadline)
    _, nodes = _consortium(wisconsin16, tmp_path, 3, spec)
    victim, slow = nodes[0], nodes[1].identity.peer_id
    real_send = victim.transport.send
    started: list[float] = []

    async def send(peer: str, body: bytes) -> None:
        if peer == slow:
            started.append(time.monotonic())
            await asyncio.sleep(delay)  # the member drains our write just under the timeout
        await real_send(peer, body)

    victim.transport.send = send  # type: ignore[method-assign]
    run_nodes(nodes)
    latencies = sorted(float(e["latency_s"]) for e in events(victim, "round"))  # type: ignore[arg-type]
    assert _rounds(victim) == list(range(1, rounds + 1))
    assert latencies[len(latencies) // 2] < delay / 2  # the median round is not held
    # never two frames in flight to the slow reader at once
    assert all(b - a >= delay * 0.9 for a, b in itertools.pairwise(started))


def test_a_long_shared_index_backlog_goes_out_in_frames_a_receiver_admits(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A receiver refuses frames with more than MAX_SHARED_ITEMS shared-index items (each
    costs it an index draw), so a sender with a longer backlog splits it over rounds."""
    from node.gossip.compress import shared_indices
    from node.wire.update import MAX_SHARED_ITEMS, decode_update

    spec = ConsortiumSpec(rounds=1, train=TRAIN, compressor="rand-k:0.05", deadline_s=1.0)
    _, nodes = _consortium(wisconsin16, tmp_path, 3, spec)
    sender, peer = nodes[0], nodes[1].identity.peer_id
    draw = shared_indices(sender.learner.compressor, sender.dim)
    assert draw is not None
    link = sender.links.out[peer]
    for t in range(150):
        link.push(draw(t), torch.zeros(len(draw(t))), shared_round=t)
    frames: list[bytes] = []

    async def record(to: str, body: bytes) -> None:
        if to == peer:
            frames.append(body)

    sender.transport.send = record  # type: ignore[method-assign, assignment]

    async def three_rounds() -> None:
        for t in (150, 151, 152):
            await sender.exchange.send(t)

    asyncio.run(three_rounds())
    seqs = [
        [i.seq for i in decode_update(decode(f).payload, sender.dim, draw, 152).items]
        for f in frames
    ]
    assert [len(q) for q in seqs[:2]] == [MAX_SHARED_ITEMS, MAX_SHARED_ITEMS]
    assert seqs[1] == list(range(MAX_SHARED_ITEMS, 2 * MAX_SHARED_ITEMS))  # next in order
    assert len(seqs[2]) <= MAX_SHARED_ITEMS  # (round 152 resends from the oldest unacked)


def test_two_sums_sharing_a_contributor_are_never_both_opened(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Two sums of one round that share a contributor would let the receiver subtract one
    from the other. Before, it decrypted every sum as it came (and only avoided adding
    both); now the later one is refused unopened, and a refused sum frees its bits."""
    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    victim, one, two = nodes
    exchange = victim.secure
    assert exchange is not None
    t = exchange.through + 1
    n = exchange.slot_count(t)
    opened: list[int] = []
    decrypt = exchange.cipher.decrypt

    def counting(sealed: Any, secret: Any) -> Any:
        opened.append(1)
        return decrypt(sealed, secret)

    exchange.cipher.decrypt = counting  # type: ignore[method-assign]

    async def scenario() -> dict[str, int]:
        rejected: Counter[str] = Counter()
        exchange.on_reject = lambda exc, peer: rejected.update([exc.reason])
        for sender, values in ((one, np.full(n, 1e5)), (two, np.full(n, 0.1))):
            frame = decode(_forged_sum(victim, sender, t, values, corrupt=False))
            try:
                exchange.handle(frame)
            except FrameError as exc:
                rejected.update([exc.reason])
            await asyncio.sleep(0.2)  # let the check of the first sum finish
        frame = decode(_forged_sum(victim, one, t, np.full(n, 0.2), corrupt=False))
        with pytest.raises(FrameError, match="second sum"):
            exchange.handle(frame)
        return dict(rejected)

    rejected = asyncio.run(scenario())
    # the 1e5 sum is opened and refused (bound), which frees its bits; the honest-looking
    # second one, over the same two contributors, is then opened and kept
    assert len(opened) == 2 and rejected == {"sealed_rejected": 1}
    assert len(exchange.sums[t]) == 1
    n = exchange.slot_count(t + 1)
    third = decode(_forged_sum(victim, two, t + 1, np.full(n, 0.1), corrupt=False))
    first = decode(_forged_sum(victim, one, t + 1, np.full(n, 0.1), corrupt=False))

    async def overlap() -> None:
        exchange.handle(third)
        with pytest.raises(FrameError, match="overlaps"):
            exchange.handle(first)
        await asyncio.sleep(0.2)

    asyncio.run(overlap())
    assert len(opened) == 3  # the overlapping one was never decrypted


def test_a_slow_reader_neither_stretches_secure_rounds_nor_gets_a_part_sent_twice(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Under secure aggregation too, a round waits for a send at most a deadline; receipts
    and each receiver's part go out at once. A part still being written to a slow
    aggregator counts as sent: sending it to the next aggregator as well could put it in
    two sums, whose difference would open it."""
    from node.wire.sealed import unpack

    deadline, delay, rounds = 0.3, 2.0, 8
    spec = ConsortiumSpec(
        rounds=rounds, train=TRAIN, compressor="block-k:0.3:64", secure="plain", deadline_s=deadline
    )
    _, nodes = _consortium(wisconsin16, tmp_path, 4, spec)
    victim, slow = nodes[0], nodes[1].identity.peer_id
    real_send = victim.transport.send
    parts: Counter[tuple[int, str]] = Counter()

    async def send(peer: str, body: bytes) -> None:
        frame = decode(body)
        if frame.topic == "contrib":
            to = unpack(frame.payload, "contrib", {"to": str, "sealed": bytes, "base": bytes})
            parts[(frame.round, to["to"])] += 1
        if peer == slow:
            await asyncio.sleep(delay)
        await real_send(peer, body)

    victim.transport.send = send  # type: ignore[method-assign]
    run_nodes(nodes)
    latencies = sorted(float(e["latency_s"]) for e in events(victim, "round"))  # type: ignore[arg-type]
    assert _rounds(victim) == list(range(1, rounds + 1))
    assert latencies[len(latencies) // 2] < delay
    assert parts and max(parts.values()) == 1


def test_a_rebase_is_announced_once_saved_and_sets_the_sum_at_the_shared_start(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """Receipts announce the epoch of the last checkpoint (a crash before the save must not
    leave neighbours on an epoch we restore without); the next resolve puts our sum at
    W_ii x̂ + (1 − W_ii) x̂₀ before it adds the round's sums of the new basis."""
    from node.wire.sealed import basis, decode_receipt

    nodes = memory_nodes(_secure_paths(subset(wisconsin16, 3), tmp_path, rounds=2))
    run_nodes(nodes)
    victim, insider = nodes[0].secure, nodes[1]
    assert victim is not None and insider.secure is not None
    epoch = victim.epoch
    insider.secure.inc = bytes([7]) * 8  # the insider's site starts over from nothing
    frame = decode(
        seal(insider.identity, victim.round, "receipt", insider.secure._receipt(victim.me))
    )

    async def scenario() -> None:
        victim.handle(frame)
        announced = decode_receipt(victim._receipt(insider.identity.peer_id)).base
        assert announced == basis(victim.inc, epoch)  # not yet saved
        victim.commit(victim.snapshot())  # the checkpoint is written
        announced = decode_receipt(victim._receipt(insider.identity.peer_id)).base
        assert announced == basis(victim.inc, epoch + 1)
        t = victim.through + 1
        s, xhat = torch.zeros(nodes[0].dim), nodes[0].state.xhat[0].clone()
        # one sum from an aggregator, both neighbours in it
        zeros = np.zeros(victim.slot_count(t))
        victim.handle(decode(_forged_sum(nodes[0], nodes[1], t, zeros, False)))
        await asyncio.sleep(0.2)
        await victim.resolve(t, s, xhat)
        # the rebase put s at W_ii x̂ + (1 − W_ii) x̂₀; the zero sum added nothing
        w = victim.weight
        expected = w[victim.me] * xhat + sum(w[p] for p in victim.neighbours) * victim.x0
        torch.testing.assert_close(s, expected)
        assert victim.included[insider.identity.peer_id][-1] == t  # the sum was taken

    asyncio.run(scenario())


def test_frames_held_from_rounds_ahead_are_bounded_and_never_outlive_their_link(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """A frame from a neighbour a round ahead waits for its round (node.exchange.
    plaintext). A member cannot make us hold more than HELD_PER_NEIGHBOUR of them (the
    rest are refused as ``future``, counted), a membership change drops them, and one
    whose sender was removed meanwhile is refused and counted, not a crash."""
    from node.exchange.plaintext import HELD_PER_NEIGHBOUR, PlaintextExchange

    spec = ConsortiumSpec(rounds=2, train=TRAIN, compressor="top-k:0.1", deadline_s=1.0)
    nodes = memory_nodes(write_consortium(tmp_path, subset(wisconsin16, 3), spec))
    run_nodes(nodes)
    victim, insider = nodes[0], nodes[1]
    exchange = victim.exchange
    assert isinstance(exchange, PlaintextExchange) and not exchange.held
    ahead = victim.round + 1

    def frame() -> Frame:
        payload = encode_update(victim.dim, -1, [])
        return decode(seal(insider.identity, ahead, "update", payload))

    for _ in range(HELD_PER_NEIGHBOUR):
        exchange.handle(frame())
    with pytest.raises(FutureFrameError, match="frames ahead"):
        exchange.handle(frame())
    assert len(exchange.held) == HELD_PER_NEIGHBOUR
    assert victim.links.heard[insider.identity.peer_id] == ahead
    exchange.rewire(victim.links.membership)
    assert not exchange.held
    exchange.handle(frame())
    del victim.links.inbound[insider.identity.peer_id]  # removed since it came
    exchange.advance(ahead)
    assert not exchange.held and victim.rejections()["frame"] == 1

"""Bring your own training loop (node.training.custom): the example runs, sites agree."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crypto.identity import load_key
from node.cli import main
from node.config import load_config
from node.errors import ConfigError, IncompatibleModelError
from node.provision import init
from node.runtime import Node
from node.training.custom import TrainingLoop, seeded_init
from node.training.dp_config import DpConfig
from node.transport.memory import MemoryNetwork, MemoryTransport

ROOT = Path(__file__).resolve().parent.parent


def _loop(seed: int, model: nn.Module | None = None) -> TrainingLoop:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TrainingLoop(
        model or nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
        DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.2, momentum=0.5),
        steps=3,
        evaluate=lambda m: float((m(x).argmax(1) == y).float().mean()),
    )


def _nodes(
    tmp_path: Path, loops: list[TrainingLoop], privacy: DpConfig | None = None, **gossip: object
) -> list[Node]:
    names = [f"s{i}" for i in range(len(loops))]
    addresses = {n: f"/memory/{n}" for n in names}
    init(tmp_path, names, seed=3, addresses=addresses, data="custom:test", rounds=12)
    network = MemoryNetwork()
    nodes = []
    for name, loop in zip(names, loops, strict=True):
        config = load_config(tmp_path / name / "site.toml").edit(
            site={"listen": addresses[name]}, gossip={"deadline_s": 2.0, **gossip}
        )
        config = replace(config, privacy=privacy)
        transport = MemoryTransport(network, load_key(config.site.key), config.site.listen)
        nodes.append(Node(config, transport, io.StringIO(), io.StringIO(), loop=loop))
    return nodes


async def _run(nodes: list[Node]) -> list[dict[str, object]]:
    return list(await asyncio.gather(*(n.run() for n in nodes)))


def test_the_example_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "examples/own_training_loop.py", "--rounds", "10", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    scores = [float(v) for v in re.findall(r"held-out accuracy ([0-9.]+)", out)]
    assert len(scores) == 3 and min(scores) > 0.85  # majority class: 63%


@pytest.mark.parametrize("secure", ["off", "plain"])
def test_sites_with_their_own_loops_reach_one_model(tmp_path: Path, secure: str) -> None:
    """Same start everywhere (seeded), gossip mixes their x, and each module holds the
    node's x afterwards; with secure aggregation too (block-k: sums are sums)."""
    loops = [_loop(i) for i in range(3)]
    gossip = {"secure": secure, "compressor": "block-k:0.5"} if secure != "off" else {}
    nodes = _nodes(tmp_path, loops, None, **gossip)
    starts = [n.state.x.clone() for n in nodes]
    assert all(torch.equal(starts[0], s) for s in starts)
    results = asyncio.run(_run(nodes))
    assert all(float(r["accuracy"]) > 0.85 for r in results)  # type: ignore[arg-type]
    xs = torch.cat([n.state.x for n in nodes])
    spread = float((xs - xs.mean(0)).norm(dim=1).max())
    assert spread < 0.25 * float(xs.mean(0).norm())
    assert spread > 0  # each site trained on its own rows
    for node, loop in zip(nodes, loops, strict=True):
        loop.load_params()
        torch.testing.assert_close(loop.layout.to_vector(loop.model), node.state.x[0])


class _Raw(nn.Module):
    """Parameters no reset_parameters covers: only building under the seed aligns them."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(x * self.scale)
        return out


def test_a_model_factory_gives_every_site_the_same_start_whatever_it_creates() -> None:
    starts = [_loop(i, None).bind(5) for i in range(2)]
    assert torch.equal(starts[0], starts[1])
    raw = [TrainingLoop(_Raw, [], nn.CrossEntropyLoss(), torch.optim.SGD) for _ in range(2)]
    torch.manual_seed(1)  # the caller's random state does not matter, and is kept
    before = torch.random.get_rng_state()
    first = raw[0].bind(7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first, raw[1].bind(7))


def test_seeded_init_gives_every_site_the_same_start() -> None:
    a, b = (
        nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3)),
        nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3)),
    )
    seeded_init(a, 11)
    seeded_init(b, 11)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bad_custom_setups_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(IncompatibleModelError, match="BatchNorm"):
        _loop(0, nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    init(tmp_path / "c", ["a", "b"], data="custom:mine")
    assert main(["node", "--config", str(tmp_path / "c" / "a" / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert "given from Python" in err and err.count("\n") == 1
    init(tmp_path / "d", ["a", "b"], data="csv:rows.csv")
    config = load_config(tmp_path / "d" / "a" / "site.toml")
    with pytest.raises(ConfigError, match='needs \\[data\\] source = "custom:NAME"'):
        Node(config, loop=_loop(0))
    dp = DpConfig(3.0, 1e-3, weight="equal")
    private = replace(load_config(tmp_path / "c" / "a" / "site.toml"), privacy=dp)
    plain = _loop(0)
    plain.loader = list(plain.loader)  # batches, but no dataset to sample records from
    with pytest.raises(ConfigError, match="needs a torch DataLoader"):
        Node(private, loop=plain)
    with pytest.raises(ConfigError, match="mean_records"):
        Node(replace(private, privacy=replace(dp, weight="records")), loop=_loop(0))


def test_dp_sgd_on_your_own_loop(tmp_path: Path) -> None:
    """[privacy] with a custom loop: Opacus trains the user's own module, optimizer and
    loss; ε is read off the accountant, never past the target; a restart resumes it."""
    from crypto.keyfile import write_secret
    from node.state.site_secrets import SEED_BYTES, SEED_FILE, dp_seed

    dp = DpConfig(3.0, 1e-3, weight="equal", rounds=6)
    nodes = _nodes(tmp_path, [_loop(i) for i in range(3)], privacy=dp)
    # The noise is drawn from each site's secret seed; fixed here so that the accuracy
    # asserted is one known draw's, not a lottery (a fresh seed gave 0.80 once in CI).
    for k, node in enumerate(nodes):
        seed_file = node.config.site.state_dir / SEED_FILE
        write_secret(seed_file, bytes([k + 1]) * SEED_BYTES, overwrite=True, what="DP seed")
    network = MemoryNetwork()
    nodes = [
        Node(
            n.config,
            MemoryTransport(network, load_key(n.config.site.key), n.config.site.listen),
            io.StringIO(),
            io.StringIO(),
            loop=_loop(k),
        )
        for k, n in enumerate(nodes)
    ]
    results = asyncio.run(_run(nodes))
    for node, result in zip(nodes, results, strict=True):
        assert node.dp is not None
        row = node.dp.rows[0]
        assert row.steps_taken == 6 * 3  # the DP rounds × the loop's steps, then no more
        assert 0 < node.learner.eps_spent <= 3.0 and result["eps_spent"] == node.learner.eps_spent
        assert row.noise_multiplier > 0.3  # noise really is added
        # sampled from the site's secret seed, not from anything public
        assert row.sample_gen.initial_seed() == dp_seed(node.config.site.state_dir)
        assert float(result["accuracy"]) > 0.8  # type: ignore[arg-type]  # majority ~50%
        assert (node.config.site.state_dir / "privacy.ledger").exists()
    again = Node(nodes[0].config, nodes[0].transport, io.StringIO(), io.StringIO(), loop=_loop(0))
    assert again.learner.eps_spent == 0.0 and again.restore()
    assert again.learner.eps_spent == pytest.approx(nodes[0].learner.eps_spent)


def test_the_loop_simulator_runs_dp_and_secure_aggregation_together(tmp_path: Path) -> None:
    """sim.own_loops: real nodes over the memory transport; DP-SGD on each site's own loop
    and secure aggregation of the noised updates in one run."""
    from sim.own_loops import simulate_loops

    dp = DpConfig(3.0, 1e-3, weight="equal", rounds=6)
    gossip = {"secure": "plain", "compressor": "block-k:0.5"}
    runs = simulate_loops(
        [_loop(i) for i in range(3)], tmp_path, rounds=12, gossip=gossip, privacy=dp
    )
    assert [r.result["round"] for r in runs] == [12, 12, 12]
    for run in runs:
        assert 0 < float(run.result["eps_spent"]) <= 3.0
        assert '"event": "key_pinned"' in run.events  # the secure handshake happened
        assert float(run.result["accuracy"]) > 0.8
    with pytest.raises(ConfigError, match="already holds a consortium"):
        simulate_loops([_loop(0), _loop(1)], tmp_path, rounds=1)

"""``murmur sim --dataset brats:DIR``: sites learn to segment generated MRI through gossip,
and bad input is refused before any work."""

from __future__ import annotations

import argparse
import io
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from node.errors import ConfigError
from node.training.dp_config import DpConfig
from node.training.segmentation.metrics import score_case
from node.training.trainer import TrainConfig
from sim.consortium import ConsortiumSpec, write_consortium
from sim.flags import add_arguments
from sim.own_loops import memory_nodes
from sim.runner import run
from sim.segmentation import finals, load_brats
from tests.conftest import tiny_brats
from tests.node_kit import events, run_nodes


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("brats-sites")
    tiny_brats(out, cases=3, naming="2021", seed=1)
    return out


def _sim(line: str, out: Path) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([*shlex.split(line), "--out", str(out)])
    return run(args, Console(file=io.StringIO(), width=150))


@pytest.mark.slow
def test_sites_learn_to_segment_through_gossip_in_process_and_as_real_nodes(
    brats: Path, tmp_path: Path
) -> None:
    """Two sites learn to segment well above the empty prediction; then two node
    processes over libp2p, each given its site folder (brats:DIR) and the run's patch
    ([train] patch), hold out the simulator's cases, train the same U-Net and end on the
    in-process figures."""
    line = (
        f"--dataset brats:{brats} --model unet2d:8 --patch 64 --rounds 40 --local-steps 2 "
        "--eval-every 20 --compressor block-k:0.1"
    )
    result = _sim(f"{line} --methods murmur", tmp_path / "inprocess")
    here = result["methods"]["murmur"]
    cases = load_brats(brats, seed=0)
    nothing = [  # predicting no tumour anywhere: the floor (sim.segmentation's "empty")
        [score_case(np.zeros_like(c.label), c.label, c.spacing) for c in site]
        for site in cases.test
    ]
    empty = finals(nothing, [len(site) for site in cases.train])
    assert empty["dice_mean"] is not None and empty["dice_mean"] < 0.05
    assert here["dice_mean"] > 0.5 and here["dice_wt"] > 0.6
    assert here["dice_mean"] > empty["dice_mean"] + 0.45
    assert here["bytes_per_node"] > 0 and here["hd95_wt"] < (empty["hd95_wt"] or 0)
    assert result["config"]["node_names"] == ["site-1", "site-2"]
    assert (tmp_path / "inprocess" / "segmentation.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "inprocess" / "summary.json").read_text())
    assert {"dice_wt", "dice_tc", "dice_et", "hd95_wt", "dice_min"} <= set(
        summary["methods"]["murmur"]
    )

    there = _sim(f"{line} --methods murmur --backend process", tmp_path / "process")
    nodes = there["methods"]["murmur"]
    assert nodes["dice_mean"] == pytest.approx(here["dice_mean"], abs=0.01)
    assert nodes["dice_min"] == pytest.approx(here["dice_min"], abs=0.01)
    assert nodes["bytes_per_node"] == pytest.approx(here["bytes_per_node"], rel=0.02)
    for region in ("wt", "tc", "et"):  # each node reports its Dice per region
        assert nodes[f"dice_{region}"] == pytest.approx(here[f"dice_{region}"], abs=0.02)
    assert nodes["dice_smallest_site"] is not None and nodes["hd95_wt"] is not None
    configs = sorted((tmp_path / "process" / "murmur" / "nodes").glob("node-*/site.toml"))
    texts = [c.read_text() for c in configs]
    assert [f"brats:{brats / f'site-{i}'}" in t for i, t in enumerate(texts, 1)] == [True, True]
    assert all('patch = "64"' in t for t in texts)


SMALL = "--model unet2d:4 --patch 32 --rounds 3 --eval-every 3"


def test_dp_runs_account_for_every_patient(brats: Path, tmp_path: Path) -> None:
    """DP-SGD on MRI, each patient a record, at the sites and as central DP-SGD: its ε
    is reported and never over the budget."""
    private = _sim(
        f"--dataset brats:{brats} {SMALL} --methods central,murmur "
        "--dp epsilon=8,delta=1e-3,clip=1.0",
        tmp_path,
    )["methods"]
    for method in ("central", "murmur"):
        assert 0 < private[method]["eps_spent"] <= 8.0
        assert 0 <= private[method]["dice_mean"] <= 1


def test_a_private_hospital_node_spends_its_budget_on_patients_and_keeps_it(
    brats: Path, tmp_path: Path
) -> None:
    """Real nodes (in memory) given ``[privacy]`` and their site folders train with
    DP-SGD, each patient a record; a node restarted from its state continues from the ε
    and the patch draws it had, never from zero."""
    from node.training.segmentation.dp import DpSegmentationTrainer

    cases = load_brats(brats, seed=0)
    dp = DpConfig(epsilon=20.0, delta=1e-3, clip=1.0, noise_multiplier=1.0, weight="equal")
    train = TrainConfig(optimizer="adam", lr=0.01, batch_size=2, stop_patience=0)
    spec = ConsortiumSpec(model="unet2d:4", rounds=2, train=train, dp=dp, deadline_s=5.0)
    paths = write_consortium(tmp_path, cases, spec)
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    spent = []
    for node in nodes:
        assert isinstance(node.dp, DpSegmentationTrainer)
        assert node.dp.rows[0].steps_taken == 2
        assert 0 < node.learner.eps_spent <= 20.0
        finish = events(node, "finish")[0]
        dice, regions = finish["accuracy"], finish["regions"]
        assert isinstance(dice, float) and 0 <= dice <= 1  # mean Dice
        assert isinstance(regions, dict) and len(regions["dice"]) == len(regions["hd95"]) == 3
        assert dice == pytest.approx(sum(regions["dice"]) / 3)
        spent.append((node.learner.eps_spent, node.dp.records[0].draws))
    for node, (eps, draws) in zip(memory_nodes(paths), spent, strict=True):
        assert node.restore()
        assert isinstance(node.dp, DpSegmentationTrainer)
        assert node.learner.eps_spent == pytest.approx(eps)
        assert node.dp.records[0].draws == draws


@pytest.mark.slow
def test_ckks_sums_the_unets_updates_as_plaintext_would(tmp_path: Path) -> None:
    """CKKS secure aggregation of the U-Net's sparse updates (three sites: a sum is only
    opened from two contributors or more) ends where plaintext gossip does, and costs
    more bytes on the wire."""
    tiny_brats(tmp_path / "data", sites=3, cases=3, seed=2)
    line = f"--dataset brats:{tmp_path / 'data'} {SMALL} --methods murmur --compressor block-k:0.1"
    plain = _sim(line, tmp_path / "plain")["methods"]["murmur"]
    secure = _sim(f"{line} --secure ckks", tmp_path / "ckks")["methods"]["murmur"]
    assert secure["bytes_per_node"] > plain["bytes_per_node"]
    assert secure["dice_mean"] == pytest.approx(plain["dice_mean"], abs=0.01)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--dataset brats:{missing}", "no such folder"),
        ("--dataset brats:{one_site}", "found 1 site folder"),
        ("--dataset brats:{brats} --kill 1@3", "without --dp-sweep, --wan and --kill"),
        ("--dataset brats:{brats} --backend process --patch 40", "multiples of 16"),
        ("--dataset brats:{brats} --dp epsilon=3,delta=0.5", "not below 1/\\(local dataset"),
        ("--dataset brats:{brats} --model mlp:32", "needs a segmentation model"),
        ("--dataset brats:{brats} --model unet3d:8 --patch 30", "multiples of 16"),
        ("--dataset brats:{brats} --model unet2d:8 --patch 64,64,8", "one slice deep"),
    ],
)
def test_bad_segmentation_runs_are_refused(
    brats: Path, tmp_path: Path, flags: str, message: str
) -> None:
    one_site = tmp_path / "one"
    (one_site / "site-1").mkdir(parents=True)
    line = flags.format(missing=tmp_path / "nowhere", one_site=one_site, brats=brats)
    with pytest.raises(ConfigError, match=message):
        _sim(f"{line} --rounds 2 --methods murmur", tmp_path / "run")

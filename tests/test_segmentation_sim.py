"""``murmur sim --dataset brats:DIR``: sites learn to segment generated MRI through gossip,
and bad input is refused before any work."""

from __future__ import annotations

import argparse
import io
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from node.errors import ConfigError
from sim.brats.make import make
from sim.flags import add_arguments
from sim.runner import run


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("brats-sites")
    make(
        out,
        sites=2,
        cases_per_site=3,
        naming="2021",
        seed=1,
        resolution=2,
        imbalance=0.0,
        show=False,
    )
    return out


def _sim(line: str, out: Path) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([*shlex.split(line), "--out", str(out)])
    return run(args, Console(file=io.StringIO(), width=150))


@pytest.mark.slow
def test_two_sites_learn_to_segment_through_gossip(brats: Path, tmp_path: Path) -> None:
    result = _sim(
        f"--dataset brats:{brats} --model unet2d:8 --patch 64 --rounds 40 --local-steps 2 "
        "--eval-every 20 "
        "--methods central,murmur --compressor block-k:0.1",
        tmp_path,
    )
    methods = result["methods"]
    empty, murmur = methods["empty"], methods["murmur"]
    assert empty["dice_mean"] < 0.05  # predicting no tumour: the floor
    assert murmur["dice_mean"] > 0.5 and murmur["dice_wt"] > 0.6
    assert murmur["dice_mean"] > empty["dice_mean"] + 0.45
    assert murmur["bytes_per_node"] > 0 and murmur["hd95_wt"] < empty["hd95_wt"]
    assert result["config"]["node_names"] == ["site-1", "site-2"]
    assert (tmp_path / "segmentation.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"dice_wt", "dice_tc", "dice_et", "hd95_wt", "dice_min"} <= set(
        summary["methods"]["murmur"]
    )


@pytest.mark.slow
def test_real_nodes_train_on_their_own_site_folders_as_the_simulator_does(
    brats: Path, tmp_path: Path
) -> None:
    """Two node processes over libp2p, each given its site folder (brats:DIR), hold out
    the simulator's cases, train the same U-Net and report its Dice; the in-process run
    of the same flags ends on the same figures."""
    line = (
        f"--dataset brats:{brats} --model unet2d:8 --rounds 30 --local-steps 2 "
        "--eval-every 30 --methods murmur --compressor block-k:0.1"
    )
    here = _sim(line, tmp_path / "inprocess")["methods"]["murmur"]
    there = _sim(f"{line} --backend process", tmp_path / "process")["methods"]["murmur"]
    # a model that has learned (an untrained one's Dice hangs on near-ties of its logits,
    # which the nodes' own float order can flip)
    assert here["dice_mean"] > 0.3
    assert there["dice_mean"] == pytest.approx(here["dice_mean"], abs=0.01)
    assert there["dice_min"] == pytest.approx(here["dice_min"], abs=0.01)
    assert there["bytes_per_node"] == pytest.approx(here["bytes_per_node"], rel=0.02)
    configs = sorted((tmp_path / "process" / "murmur" / "nodes").glob("node-*/site.toml"))
    assert [f"brats:{brats / f'site-{i}'}" in c.read_text() for i, c in enumerate(configs, 1)] == [
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--dataset brats:{missing}", "no such folder"),
        ("--dataset brats:{one_site}", "found 1 site folder"),
        ("--dataset brats:{brats} --kill 1@3", "without --dp-sweep, --wan and --kill"),
        ("--dataset brats:{brats} --backend process --patch 64", "leave --patch out"),
        ("--dataset brats:{brats} --dp epsilon=3,delta=1e-5", "--dp with segmentation"),
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

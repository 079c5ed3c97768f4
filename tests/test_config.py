"""Site config validation: every problem reported at once; explicit edges."""

from __future__ import annotations

import argparse
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.identity import SiteIdentity
from node.config import SECTIONS, GossipSection, TrainSection, load_config
from node.config.schema import toml_value
from node.errors import ConfigError
from node.state.membership import Membership
from node.training.trainer import TrainConfig
from sim.consortium import write_consortium
from sim.faults import FaultConfig
from sim.flags import TRAIN, add_arguments
from sim.prep import FederatedData
from sim.runner import consortium_spec, train_config
from tests.node_kit import subset

IDS = [SiteIdentity.generate().peer_id for _ in range(4)]


def _write(tmp_path: Path, consortium: str, extra: str = "") -> Path:
    members = ", ".join(f'"{m}"' for m in IDS)
    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nkey = "site.key"\n[consortium]\nmembers = [{members}]\npeers = {{}}\n'
        f"{consortium}\n"
        f'[data]\nsource = "npz:data.npz"\n{extra}'
    )
    return path


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'topology = "regular:9"',
        '[train]\nlr = -1\noptimizer = "lbfgs"\n[gossip]\ngamma = 3\n[faults]\ndrop = 2\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for expected in ("topology", "lr must be positive", "optimizer", "gamma", "drop"):
        assert expected in message
    assert "\n" not in message


def test_a_segmentation_site_gets_the_segmentation_training_defaults(tmp_path: Path) -> None:
    """A hospital writing only ``model = "unet3d:8"`` trains as the simulator does (Adam,
    two patches, no validation stop), not with a table classifier's SGD at 0.3; keys it
    does write win; the patch is checked against the model."""
    config = load_config(_write(tmp_path, "", '[train]\nmodel = "unet3d:8"\nlr = 0.003\n'))
    assert config.train.trainer == TrainConfig(
        optimizer="adam", lr=0.003, batch_size=2, stop_patience=0
    )
    assert config.train.patch is None
    flat = load_config(_write(tmp_path, "", '[train]\nmodel = "unet2d:8"\npatch = "64"\n'))
    assert flat.train.trainer.batch_size == 16 and flat.train.patch == "64"
    assert load_config(_write(tmp_path, "")).train.trainer == TrainConfig()
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config(_write(tmp_path, "", '[train]\nmodel = "unet3d:8"\npatch = "50"\n'))
    with pytest.raises(ConfigError, match="patch is for segmentation models"):
        load_config(_write(tmp_path, "", '[train]\npatch = "64"\n'))


def test_explicit_edges_give_metropolis_weights(tmp_path: Path) -> None:
    a, b, c, d = IDS
    edges = f'edges = [["{a}", "{b}"], ["{a}", "{c}"], ["{a}", "{d}"], ["{b}", "{c}"]]'
    config = load_config(_write(tmp_path, edges))
    weights = Membership.of(config).weights(d)
    # d has degree 1 and a degree 3: W_da = 1/(1 + 3), W_dd = 3/4.
    assert weights == {a: 0.25, d: 0.75}


@pytest.mark.parametrize(
    ("edges", "problem"),
    [
        ('[["{a}", "{b}"], ["{c}", "{d}"]]', "2 parts"),
        ('[["{a}", "12D3KooWnotamember"]]', "not in members"),
        ('[["{a}"]]', "is not a [string, string] pair"),
    ],
)
def test_bad_edges_are_explained(tmp_path: Path, edges: str, problem: str) -> None:
    a, b, c, d = IDS
    text = "edges = " + edges.format(a=a, b=b, c=c, d=d)
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_config(_write(tmp_path, text))


def test_unknown_builtin_dataset_is_explained(tmp_path: Path) -> None:
    path = _write(tmp_path, 'topology = "ring"')
    path.write_text(path.read_text().replace("npz:data.npz", "builtin:mnist"))
    with pytest.raises(ConfigError, match="builtin:NAME with NAME one of breast-cancer"):
        load_config(path)


def test_privacy_needs_the_consortium_mean_for_records_weighting(tmp_path: Path) -> None:
    privacy = "[privacy]\nepsilon = 3\ndelta = 1e-5\nrounds = 30\n"
    with pytest.raises(ConfigError, match=r"needs mean_records.*or set weight = \"equal\""):
        load_config(_write(tmp_path, "", privacy))
    config = load_config(_write(tmp_path, "", privacy + "mean_records = 28.5\n"))
    assert config.privacy is not None
    assert (config.privacy.rounds, config.privacy.weight, config.privacy.mean_records) == (
        30,
        "records",
        28.5,
    )
    config = load_config(_write(tmp_path, "", privacy + 'weight = "equal"\n'))
    assert config.privacy is not None and config.privacy.mean_records is None
    with pytest.raises(ConfigError, match=r"\[privacy\] dp rounds must be at least 1"):
        load_config(_write(tmp_path, "", privacy.replace("30", "0") + 'weight = "equal"\n'))


def test_an_unknown_key_or_section_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "", "[train]\nlearning_rate = 0.1\nbatchsize = 8\n[gosip]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "[train] unknown key 'batchsize' (did you mean 'batch_size'?)" in message
    assert "[train] unknown key 'learning_rate'" in message
    assert "unknown section [gosip] (did you mean 'gossip'?)" in message


@given(st.text())
def test_any_string_is_written_as_toml_that_reads_back(text: str) -> None:
    assert tomllib.loads(f"k = {toml_value(text)}")["k"] == text
    assert tomllib.loads(f"t = {toml_value({text: 1})}")["t"] == {text: 1}


def test_a_config_round_trips_through_to_toml(tmp_path: Path) -> None:
    """Every section with non-default values: load(to_toml(load(f))) == load(f)."""
    b = IDS[1]
    path = _write(
        tmp_path,
        'seed = 7\ntopology = "complete"',
        'features = "features.json"\n'
        '[train]\nmodel = "logistic"\nrounds = 12\neval_every = 3\noptimizer = "sgd"\n'
        "lr = 0.05\nmomentum = 0.9\nnesterov = true\nweight_decay = 0.001\nprox_mu = 0.01\n"
        'local_steps = 2\nbatch_size = 8\ntime_budget_s = 1.5\nlr_schedule = "constant"\n'
        '[gossip]\ncompressor = "rand-k:0.1"\nmethod = "murmur-gt"\ngamma = 0.25\n'
        'deadline_s = 2.5\nmax_frame_bytes = 65536\nsecure = "plain"\n'
        '[privacy]\nepsilon = 3\ndelta = 1e-5\nrounds = 30\nweight = "equal"\nclip = 0.5\n'
        '[telemetry]\nmqtt = "mqtt://127.0.0.1:1884"\ntopic = "site-a"\nusername = "a"\n'
        'password_file = "broker.pw"\n'
        '[faults]\ndrop = 0.1\ndelay_ms = 4.0\nslow = 2.0\npartition = ["0,1|2,3@2:5"]\n',
    )
    peers = f'peers = {{ "{b}" = "/ip4/10.0.0.2/tcp/4001" }}'
    path.write_text(path.read_text().replace("peers = {}", peers))
    config = load_config(path)
    assert config.train.trainer.weight_decay == 0.001 and config.gossip.gamma == 0.25
    assert config.data.features == tmp_path / "features.json"  # beside the config
    again = tmp_path / "again" / "site.toml"
    again.parent.mkdir()
    again.write_text(config.to_toml(comments=True))
    reloaded = load_config(again)
    assert {f: getattr(reloaded, f) for f in SECTIONS} == {f: getattr(config, f) for f in SECTIONS}
    assert reloaded.faults.partitions == config.faults.partitions != ()


def test_every_sim_training_flag_reaches_the_process_backends_nodes(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    """`murmur sim --backend process` writes each node a site.toml; every training and
    gossip setting on the command line must arrive there, not silently fall back."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        shlex.split(
            "--optimizer sgd --lr 0.07 --lr-schedule constant --momentum 0.5 --nesterov "
            "--weight-decay 0.002 --prox-mu 0.01 --local-steps 3 --batch-size 8 --time-budget "
            "2.5 --stop-patience 30 --model logistic --rounds 7 --eval-every 2 --seed 3 "
            "--compressor block-k:0.1 "
            "--gamma 0.3 --deadline 1500 --secure plain --drop 0.05 --delay 3 --dp "
            "epsilon=3,delta=1e-5,rounds=5,weight=equal"
        )
    )
    train = train_config(args)
    changed = {
        f.name for f in fields(TrainConfig) if getattr(train, f.name) != getattr(TRAIN, f.name)
    }
    # A new TrainConfig field without a flag fails here (nesterov needs the default sgd).
    assert changed == {f.name for f in fields(TrainConfig)} - {"optimizer"}
    assert train_config(parser.parse_args(["--optimizer", "adam"])).optimizer == "adam"
    spec = consortium_spec(args, train, "murmur-gt", FaultConfig(slow={1: 2.0}))
    node = load_config(write_consortium(tmp_path, subset(wisconsin16, 3), spec)[1])
    assert node.train == TrainSection(model="logistic", rounds=7, eval_every=2, trainer=train)
    assert node.gossip == GossipSection(
        compressor="block-k:0.1", method="murmur-gt", gamma=0.3, deadline_s=1.5, secure="plain"
    )
    assert node.consortium.seed == 3 and node.privacy is not None
    assert (
        node.privacy.epsilon,
        node.privacy.rounds,
        node.privacy.weight,
    ) == (3.0, 5, "equal")
    assert (
        node.faults.drop,
        node.faults.delay_ms,
        node.faults.slow,
    ) == (0.05, 3.0, 2.0)

"""Site config validation: every problem reported at once; explicit edges."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto.identity import SiteIdentity
from node.config import load_config
from node.errors import ConfigError
from node.membership import Membership

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
        ('[["{a}"]]', "is not a [peer, peer] pair"),
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
    assert config.dp is not None
    assert (config.dp.rounds, config.dp.weight, config.dp.mean_records) == (30, "records", 28.5)
    config = load_config(_write(tmp_path, "", privacy + 'weight = "equal"\n'))
    assert config.dp is not None and config.dp.mean_records is None
    with pytest.raises(ConfigError, match=r"\[privacy\] dp rounds must be at least 1"):
        load_config(_write(tmp_path, "", privacy.replace("30", "0") + 'weight = "equal"\n'))

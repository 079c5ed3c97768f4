"""The same CSV gives the same features at a node and in the simulator (node.training.features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from node.cli import main
from node.errors import ConfigError
from node.training.data import load_site_data
from node.training.features import Featurizer
from sim.data import load_dataset
from sim.partition import natural
from sim.prep import prepare, split_held_out


def _cohort(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 12, rows)
    age[rng.random(rows) < 0.1] = np.nan
    ward = rng.choice(["icu", "onc", "surg"], rows).astype(object)
    ward[rng.random(rows) < 0.1] = None
    return pd.DataFrame(
        {
            "age": age,
            "marker": rng.exponential(3.0, rows),
            "ward": ward,
            "died": np.where(rng.random(rows) < 0.4, "yes", "no"),
            "site": np.repeat(["a", "b", "c"], rows // 3),
        }
    )


def test_a_node_encodes_its_csv_exactly_as_the_simulator_does(tmp_path: Path) -> None:
    """Each site's training rows as its own CSV; the sites' moments added by `murmur data`
    give features.json; a node reading its CSV with it gets the simulator's tensors."""
    cohort = _cohort()
    path = tmp_path / "cohort.csv"
    cohort.to_csv(path, index=False)
    table = load_dataset(f"csv:{path}", target="died", site_column="site")
    parts, names = natural(table.sites, min_rows=1)
    data = prepare(table, parts, names, seed=4)
    splits = split_held_out(parts, np.random.default_rng(4 + 17))  # prepare's own draw
    on_disk = pd.read_csv(path)
    moments = []
    for k, (train_rows, _) in enumerate(splits):
        site_csv = tmp_path / f"site-{k}.csv"
        on_disk.iloc[train_rows].drop(columns=["site"]).to_csv(site_csv, index=False)
        moments.append(tmp_path / f"moments-{k}.json")
        args = ["data", "moments", "--csv", str(site_csv), "--target", "died"]
        assert main([*args, "--out", str(moments[-1])]) == 0
    features = tmp_path / "features.json"
    assert main(["data", "features", *map(str, moments), "--out", str(features)]) == 0
    encoding = Featurizer.load(features)
    assert encoding.width == data.n_features == 2 + 4  # age, marker, ward ∪ {<missing>}
    for k in range(len(splits)):
        site = load_site_data(f"csv:{tmp_path / f'site-{k}.csv'}", "died", encoding=encoding)
        x, y = data.train[k]
        assert torch.equal(site.x, x)  # bit for bit
        assert torch.equal(site.y, y) and site.n_classes == data.n_classes == 2


def test_held_out_rows_are_encoded_with_the_training_rows_statistics(tmp_path: Path) -> None:
    train, held = tmp_path / "train.csv", tmp_path / "eval.csv"
    pd.DataFrame({"v": [0.0, 2.0, 4.0, 6.0], "y": [0, 1, 0, 1]}).to_csv(train, index=False)
    pd.DataFrame({"v": [10.0, 10.0], "y": [0, 1]}).to_csv(held, index=False)
    site = load_site_data(f"csv:{train}", "y")
    scored = load_site_data(f"csv:{held}", "y", encoding=site.encoding)
    std = float(np.std([0.0, 2.0, 4.0, 6.0]))
    torch.testing.assert_close(scored.x[:, 0], torch.full((2,), (10.0 - 3.0) / std))


def test_bad_feature_inputs_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"ward": ["a", "b", "a"], "v": [1, 2, 3], "y": [0, 1, 0]}).to_csv(
        path, index=False
    )
    with pytest.raises(ConfigError, match=r"columns \['ward'\] are not numeric.*\[data\] features"):
        load_site_data(f"csv:{path}", "y")
    other = tmp_path / "other.csv"
    pd.DataFrame({"v": [1, 2], "y": [0, 1]}).to_csv(other, index=False)
    moments = tmp_path / "m.json"
    assert (
        main(["data", "moments", "--csv", str(path), "--target", "y", "--out", str(moments)]) == 0
    )
    features = tmp_path / "f.json"
    assert main(["data", "features", str(moments), "--out", str(features)]) == 0
    with pytest.raises(ConfigError, match=r"columns \['ward'\] are in the consortium"):
        load_site_data(f"csv:{other}", "y", encoding=Featurizer.load(features))
    third = tmp_path / "third.csv"
    pd.DataFrame({"ward": ["a"], "v": [1], "y": [2]}).to_csv(third, index=False)
    with pytest.raises(ConfigError, match=r"labels \['2'\] are not among the classes"):
        load_site_data(f"csv:{third}", "y", encoding=Featurizer.load(features))
    features.write_text('{"format": "murmur-features/1", "numeric": ["v"]}')
    with pytest.raises(ConfigError, match="features file"):
        Featurizer.load(features)

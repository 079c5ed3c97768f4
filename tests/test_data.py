from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sim.data import load_dataset
from sim.errors import DataError
from sim.partition import dirichlet, iid, natural
from sim.prep import prepare
from sim.runner import split_note


def test_ncctg_lung_sites_are_real_institutions() -> None:
    table = load_dataset("ncctg-lung")
    assert table.sites is not None and len(table.labels) == len(table.sites)
    parts, names = natural(table.sites)
    assert "inst-1" in names and names[-1].startswith("other(")
    assert sum(len(p) for p in parts) == len(table.labels)
    assert 0.5 < table.labels.mean() < 0.8  # most of this cohort died within a year


def test_dirichlet_skews_labels_and_keeps_every_row() -> None:
    labels = load_dataset("breast-cancer").labels
    rng = np.random.default_rng(0)
    skewed = dirichlet(labels, 16, 0.3, rng)
    assert sorted(np.concatenate(skewed).tolist()) == list(range(len(labels)))
    fractions = [labels[p].mean() for p in skewed]
    flat = [labels[p].mean() for p in iid(len(labels), 16, rng)]
    assert np.std(fractions) > 2 * np.std(flat)


def test_federated_standardization_matches_pooled_statistics(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "age": [30.0, 40.0, np.nan, 60.0, 70.0, 80.0, 20.0, 50.0, 45.0, 35.0],
            "ward": ["a", "b", None, "a", "c", "b", "a", "a", "c", "b"],
            "died": ["yes", "no"] * 5,
            "site": ["x"] * 5 + ["y"] * 5,
        }
    )
    path = tmp_path / "cohort.csv"
    frame.to_csv(path, index=False)
    table = load_dataset(f"csv:{path}", target="died", site_column="site")
    parts, names = natural(table.sites, min_rows=1)
    data = prepare(table, parts, names, seed=0)
    train_x, _ = data.pooled("train")
    assert data.n_features == 1 + 4  # age + one-hot of a, b, c, <missing>
    assert torch.allclose(train_x[:, 0].mean(), torch.tensor(0.0), atol=0.2)
    assert set(train_x[:, 1:].sum(1).tolist()) == {1.0}


@pytest.mark.parametrize(
    ("column", "message"), [("nope", "is not a column"), ("ward", "must be binary")]
)
def test_csv_bad_target(tmp_path: Path, column: str, message: str) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"ward": ["a", "b", "c", "a"], "y": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        load_dataset(f"csv:{path}", target=column)


def test_csv_target_with_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1, 2, 3], "y": [0, None, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing values"):
        load_dataset(f"csv:{path}", target="y")


def test_a_natural_split_says_when_alpha_goes_unused() -> None:
    note = split_note("auto", "natural", 10, 0.5)
    assert note is not None and "10 sites" in note and "--split dirichlet" in note
    assert split_note("auto", "natural", 10, None) is None  # nothing was asked for
    assert split_note("auto", "dirichlet", 16, 0.5) is None
    assert split_note("natural", "natural", 10, 0.5) is None  # asked for by name

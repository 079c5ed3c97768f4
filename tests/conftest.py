"""Shared fixtures: a small federated Wisconsin split reused across tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim.data import load_dataset
from sim.partition import dirichlet
from sim.prep import FederatedData, prepare


@pytest.fixture(scope="session")
def wisconsin16() -> FederatedData:
    table = load_dataset("breast-cancer")
    parts = dirichlet(table.labels, 16, 0.5, np.random.default_rng(0))
    return prepare(table, parts, [f"node-{i}" for i in range(16)], 0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

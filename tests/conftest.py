"""Shared fixtures: a small federated Wisconsin split, a real MQTT broker on loopback."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT broker on loopback for the session; ``make test`` installs mosquitto."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    from sim.consortium import free_ports

    port = free_ports(1)[0]
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"mosquitto did not start on port {port}: {err.strip()}")
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()

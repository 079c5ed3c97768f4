"""Bytes on the wire: the in-process simulator counts the frames real nodes send.

The same 4-site consortium runs once in-process and once as four real node processes
over libp2p; the simulator's ``bytes_per_node`` (sized by the codec without encoding)
must match what the nodes counted as they wrote each frame, within 2%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main

COMPRESSORS = ["identity", "top-k:0.1", "rand-k:0.1", "block-k:0.1", "block-k:0.1+q8"]


def _bytes(out: Path, compressor: str, backend: str) -> float:
    code = main(
        [
            "sim",
            "--nodes",
            "4",
            "--topology",
            "ring",
            "--compressor",
            compressor,
            "--rounds",
            "20",
            "--dataset",
            "breast-cancer",
            "--seed",
            "0",
            "--methods",
            "murmur",
            "--backend",
            backend,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    return float(summary["methods"]["murmur"]["bytes_per_node"])


@pytest.mark.slow
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_process_bytes_equal_in_process_bytes(compressor: str, tmp_path: Path) -> None:
    simulated = _bytes(tmp_path / "inprocess", compressor, "inprocess")
    measured = _bytes(tmp_path / "process", compressor, "process")
    assert measured == pytest.approx(simulated, rel=0.02), (compressor, simulated, measured)

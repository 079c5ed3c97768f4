"""sim.wan_run: real node processes, one per network namespace, over a shaped WAN.

Needs root, namespaces and a shaping backend (netem or nfqueue, sim.wan_shaping); skipped
with the probe's reason where this machine has none.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sim.consortium import ConsortiumSpec
from sim.netns import UNSHAPED, WanProfile, unavailable
from sim.prep import FederatedData
from sim.wan_run import run_wan

SHAPING = unavailable()
ROUNDS = 8
# Well above a round's compute: four nodes share this machine's two cores, so a short
# delay hides inside the time a node waits for a core anyway (a 20 ms delay once added
# only 12 ms to the median round).
DELAY_MS = 100


def _rounds(out: Path) -> tuple[dict[int, int], list[float]]:
    """Each node's last round and every round's latency, from the merged timeline."""
    last: dict[int, int] = {}
    latencies: list[float] = []
    for path in sorted((out / "nodes").glob("node-*/node.jsonl")):
        node = int(path.parent.name.split("-")[1])
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "round":
                last[node] = max(last.get(node, 0), int(event["round"]))
                latencies.append(float(event["latency_s"]))
    assert (out / "timeline.jsonl").stat().st_size > 0
    return last, latencies


@pytest.mark.slow
@pytest.mark.skipif(SHAPING is not None, reason=f"no shaped WAN here: {SHAPING}")
def test_a_consortium_across_namespaces_finishes_and_feels_the_delay(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    data = wisconsin16.first(4)
    spec = ConsortiumSpec(rounds=ROUNDS, eval_every=ROUNDS)
    medians = {}
    for name, profile in (
        ("lan", UNSHAPED),
        ("wan", WanProfile(delay_ms=DELAY_MS, jitter_ms=0, rate_mbit=50, loss_pct=0)),
    ):
        out = tmp_path / name
        result, info = run_wan(out, data, spec, profile, timeout_s=300)
        last, latencies = _rounds(out)
        assert last == dict.fromkeys(range(4), ROUNDS), last
        assert result.final["accuracy_mean"] is not None
        assert len(info["addresses"]) == 4
        assert info["shaping"] in (("none",) if name == "lan" else ("netem", "nfqueue"))
        medians[name] = statistics.median(latencies)
    print(f"median round latency: lan {medians['lan']:.3f} s, wan {medians['wan']:.3f} s")
    # A ring round ends only once both neighbours' frames of that round have crossed the
    # link, and theirs began after their previous round: rounds can come no faster than
    # one trip apart, whatever the compute.
    assert medians["wan"] >= 0.9 * DELAY_MS / 1000
    assert medians["wan"] > medians["lan"] + 0.5 * DELAY_MS / 1000

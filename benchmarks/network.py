"""``make bench`` (networked node): libp2p stream throughput vs plain asyncio TCP, and
16 real node processes on Wisconsin (median round latency, RSS per node).

Writes ``benchmarks/results/network.{json,md}``. Both throughputs are measured in the
same run, one after the other, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from crypto.identity import SiteIdentity
from node.p2p import P2PTransport
from node.trainer import TrainConfig
from sim.consortium import ConsortiumSpec
from sim.data import load_dataset
from sim.partition import dirichlet
from sim.prep import prepare
from sim.process import run_processes

RESULTS = Path(__file__).parent / "results"
FRAME = 2**20


async def libp2p_throughput(frames: int) -> float:
    a = P2PTransport(SiteIdentity.generate(), max_frame_bytes=2 * FRAME, timeout_s=30)
    b = P2PTransport(SiteIdentity.generate(), max_frame_bytes=2 * FRAME, timeout_s=30)
    await a.start()
    await b.start()
    a.set_peers({b.peer_id: b.listen_addr})
    b.set_peers({a.peer_id: a.listen_addr})
    body = bytes(FRAME)
    await a.send(b.peer_id, body)  # connect and warm up

    async def drain() -> None:
        count = 0
        async for _ in b.incoming():
            count += 1
            if count == frames + 1:
                return

    receiving = asyncio.create_task(drain())
    began = time.perf_counter()
    for _ in range(frames):
        await a.send(b.peer_id, body)
    await receiving
    elapsed = time.perf_counter() - began
    await a.aclose()
    await b.aclose()
    return frames * FRAME / elapsed


async def tcp_throughput(frames: int) -> float:
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(frames):
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size)
        done.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    body = bytes(FRAME)
    began = time.perf_counter()
    for _ in range(frames):
        writer.write(len(body).to_bytes(4, "big") + body)
        await writer.drain()
    await done.wait()
    elapsed = time.perf_counter() - began
    writer.close()
    server.close()
    return frames * FRAME / elapsed


def processes(nodes: int, rounds: int) -> dict[str, Any]:
    table = load_dataset("breast-cancer")
    parts = dirichlet(table.labels, nodes, 0.5, np.random.default_rng(0))
    data = prepare(table, parts, [f"node-{i}" for i in range(nodes)], 0)
    spec = ConsortiumSpec(
        rounds=rounds, train=TrainConfig(optimizer="sgd", lr=0.3, batch_size=16), eval_every=10
    )
    out = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    try:
        result = run_processes(out, data, spec, [])
        rss = []
        for path in sorted((out / "nodes").glob("node-*/node.jsonl")):
            events = [json.loads(line) for line in path.read_text().splitlines()]
            rss += [e["rss_bytes"] for e in events if e.get("event") == "finish"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "nodes": nodes,
        "rounds": rounds,
        "median_round_latency_s": result.final["round_latency_median_s"],
        "accuracy_mean": result.final["accuracy_mean"],
        "wall_s": result.final["wall_s"],
        "rss_per_node_bytes": float(np.median(rss)) if rss else None,
    }


def main() -> None:
    frames = 64
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d")}
    tcp = asyncio.run(tcp_throughput(frames))
    p2p = asyncio.run(libp2p_throughput(frames))
    report["throughput"] = {"tcp_bytes_per_s": tcp, "libp2p_bytes_per_s": p2p, "ratio": p2p / tcp}
    print(f"throughput: tcp {tcp / 1e6:.0f} MB/s, libp2p {p2p / 1e6:.0f} MB/s", flush=True)
    report["processes"] = processes(16, 50)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "network.json").write_text(json.dumps(report, indent=2))
    t, p = report["throughput"], report["processes"]
    md = "\n".join(
        [
            "# Networked node benchmarks",
            "",
            f"Measured {report['date']}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| 1 MiB frames, plain asyncio TCP | {t['tcp_bytes_per_s'] / 1e6:.0f} MB/s |",
            f"| 1 MiB frames, libp2p (Noise + Yamux) | {t['libp2p_bytes_per_s'] / 1e6:.0f} MB/s |",
            f"| libp2p / TCP | {100 * t['ratio']:.1f}% (target ≥ 50%) |",
            f"| 16 processes × 50 rounds: median round latency | "
            f"{p['median_round_latency_s']:.3f} s (target ≤ 0.5 s) |",
            f"| 16 processes: accuracy mean | {100 * (p['accuracy_mean'] or 0):.1f}% |",
            f"| 16 processes: wall | {p['wall_s']:.1f} s |",
            f"| RSS per node (median) | {(p['rss_per_node_bytes'] or 0) / 2**20:.0f} MiB |",
        ]
    )
    (RESULTS / "network.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()

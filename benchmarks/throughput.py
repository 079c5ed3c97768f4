"""1 MiB frames over one stream on loopback: libp2p (Noise + Yamux) vs plain asyncio TCP.

The receiver runs in its own process, as a neighbour's node does: in one process, the
sender's and receiver's Python event loops would share one interpreter lock and the
measure would be of that contention, not of the stream. Both kinds are measured in the
same run with the same frames; the time runs from the first frame sent (after a warm-up
frame has set up the connection) until the receiver reports the last one read.

``python -m benchmarks.throughput tcp|libp2p FRAMES [ALLOWED_PEER]`` is the receiver: it
prints its address, then ``done`` when it has read FRAMES + 1 frames.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from crypto.identity import SiteIdentity

FRAME = 2**20


async def _serve_tcp(frames: int) -> None:
    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(frames + 1):
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size)
        print("done", flush=True)
        finished.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await finished.wait()
    server.close()


async def _serve_libp2p(frames: int, allowed: str) -> None:
    from node.transport.p2p import P2PTransport

    me = P2PTransport(SiteIdentity.generate(), max_frame_bytes=2 * FRAME, timeout_s=60)
    await me.start()
    me.set_peers({allowed: "/ip4/127.0.0.1/tcp/1"})  # inbound only: the address is unused
    print(f"{me.peer_id} {me.listen_addr}", flush=True)
    count = 0
    async for _ in me.incoming():
        count += 1
        if count == frames + 1:
            print("done", flush=True)
            break
    await me.aclose()


def _receiver(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.throughput", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return (await asyncio.to_thread(proc.stdout.readline)).strip()


async def tcp(frames: int) -> float:
    proc = _receiver(["tcp", str(frames)])
    host, port = (await _line(proc)).split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = FRAME.to_bytes(4, "big") + bytes(FRAME)
    writer.write(body)  # warm-up
    began = time.perf_counter()
    for _ in range(frames):
        writer.write(body)
        await writer.drain()
    assert await _line(proc) == "done"
    elapsed = time.perf_counter() - began
    writer.close()
    proc.wait(30)
    return frames * FRAME / elapsed


async def libp2p(frames: int) -> float:
    from node.transport.p2p import P2PTransport

    me = P2PTransport(SiteIdentity.generate(), max_frame_bytes=2 * FRAME, timeout_s=60)
    await me.start()
    proc = _receiver(["libp2p", str(frames), me.peer_id])
    peer, address = (await _line(proc)).split()
    me.set_peers({peer: address})
    body = bytes(FRAME)
    await me.send(peer, body)  # connect and warm up
    began = time.perf_counter()
    for _ in range(frames):
        await me.send(peer, body)
    assert await _line(proc) == "done"
    elapsed = time.perf_counter() - began
    await me.aclose()
    proc.wait(30)
    return frames * FRAME / elapsed


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    if kind == "tcp":
        asyncio.run(_serve_tcp(count))
    else:
        asyncio.run(_serve_libp2p(count, sys.argv[3]))

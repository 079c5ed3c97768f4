"""The delay line of a site's uplink where the kernel has no netem: an NFQUEUE delayer.

:mod:`sim.wan_shaping` sends every packet leaving a site's ``eth0`` to NFQUEUE ``N``
(``iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass``); this process,
run inside that site's namespace, takes each one, draws its one-way delay (normal with
mean ``--delay-ms`` and deviation ``--jitter-ms``, clipped to [0, delay + 4·jitter] as
netem's normal table is), holds it and accepts it when it is due. Packets are released in
deadline order (a heap and a timer: the ``select`` timeout), so with jitter they reorder,
as netem's do without a rate; ``--in-order`` makes each deadline at least the previous
one from the same sender address, as netem keeps a sender's packets in order when it
also shapes a rate.

It never drops a packet. It asks the kernel for the packet's metadata only (COPY_META;
with ``--in-order`` the first 20 bytes too, the IPv4 header with the sender's address),
so holding one costs a heap entry, and gives its verdict later: NetfilterQueue lets a
Packet be accepted after the callback has returned (``retain()`` only keeps the payload,
which is not needed for that). It runs at nice −10 where it may, so that busy sites on
few cores delay its timer less, and it exits when the process that started it does. On SIGTERM
or SIGINT it accepts everything it still holds, at once, and exits 0. Should it die, the
kernel drops what it held (like a link cut for one delay) and, with ``--queue-bypass``,
lets every later packet through unshaped; the harness checks at teardown that it is
still alive, so such a run fails instead of passing as shaped.

Protocol with the harness: one line ``ready`` on stdout once the queue is bound (packets
sent before that pass unshaped, so the harness waits for it), and, on exit, one JSON line
of counts: ``packets`` delayed, ``max_held`` at once, the kernel's ``queue_dropped``
(queue full) and ``user_dropped`` (netlink buffer full) for this queue, which must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import itertools
import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

# Netlink receive buffer for the queue's messages (COPY_META: ~150 bytes each, plus
# overhead): room for tens of thousands queued at once while this process is busy.
SOCKET_BYTES = 16 << 20
# Packets due within this much of each other leave in one wake-up: below the timer's own
# slack, so it costs no accuracy, and it spares a select() per packet in a burst.
BATCH_S = 0.0002
PROC_QUEUES = Path("/proc/net/netfilter/nfnetlink_queue")
IP_HEADER = 20  # bytes copied with --in-order: the sender's address is bytes 12..15
PR_SET_PDEATHSIG = 1


def _kernel_drops(queue: int) -> dict[str, int]:
    """This namespace's drop counters for ``queue`` (the kernel's per-queue statistics:
    number, portid, total, mode, range, queue_dropped, user_dropped, id, 1)."""
    try:
        lines = PROC_QUEUES.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        cols = line.split()
        if len(cols) >= 7 and cols[0] == str(queue):
            return {"queue_dropped": int(cols[5]), "user_dropped": int(cols[6])}
    return {}


class Delayer:
    """The held packets and the delay draw; no I/O, so it can be tested without a queue."""

    def __init__(self, delay_ms: float, jitter_ms: float, seed: int, in_order: bool) -> None:
        self.delay_s = delay_ms / 1000
        self.jitter_s = jitter_ms / 1000
        self.in_order = in_order
        self.rng = random.Random(seed)
        self.held: list[tuple[float, int, Any]] = []
        self.seq = itertools.count()
        self.last_due: dict[bytes, float] = {}  # per sender, with in_order
        self.packets = 0
        self.max_held = 0

    def draw(self) -> float:
        """One packet's delay in seconds: normal, clipped to [0, delay + 4·jitter]."""
        if self.jitter_s == 0:
            return self.delay_s
        drawn = self.rng.gauss(self.delay_s, self.jitter_s)
        return min(max(drawn, 0.0), self.delay_s + 4 * self.jitter_s)

    def hold(self, packet: Any, now: float, sender: bytes = b"") -> None:
        """Hold ``packet`` (arrived at ``now``) until its delay has passed."""
        due = now + self.draw()
        if self.in_order:
            due = max(due, self.last_due.get(sender, 0.0))
            self.last_due[sender] = due
        heapq.heappush(self.held, (due, next(self.seq), packet))
        self.packets += 1
        self.max_held = max(self.max_held, len(self.held))

    def due(self, now: float) -> list[Any]:
        """Every packet due by ``now`` (+ BATCH_S), earliest first, out of the heap."""
        out = []
        while self.held and self.held[0][0] <= now + BATCH_S:
            out.append(heapq.heappop(self.held)[2])
        return out

    def timeout(self, now: float) -> float | None:
        """Seconds until the next packet is due (None: nothing held)."""
        return max(self.held[0][0] - now, 0.0) if self.held else None

    def release_all(self) -> list[Any]:
        out = [entry[2] for entry in sorted(self.held)]
        self.held.clear()
        return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim.wan_delay", description=__doc__)
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    parser.add_argument("--delay-ms", type=float, required=True, help="mean one-way delay")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="its standard deviation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the delay draws")
    parser.add_argument("--in-order", action="store_true", help="never reorder packets")
    parser.add_argument(
        "--max-len", type=int, default=1024, help="packets the kernel may hold for us"
    )
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or args.jitter_ms < 0 or args.max_len < 1:
        parser.error("delays must be ≥ 0 and --max-len ≥ 1")
    return args


def _detach() -> None:
    """Exit with the parent (SIGTERM on its death: we release what we hold), run first."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # it died before prctl took effect
        sys.exit(1)
    with contextlib.suppress(OSError):
        os.nice(-10)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _detach()
    from netfilterqueue import COPY_META, COPY_PACKET, NetfilterQueue

    delayer = Delayer(args.delay_ms, args.jitter_ms, args.seed, args.in_order)
    stopping = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def arrive(packet: Any) -> None:
        sender = packet.get_payload()[12:16] if args.in_order else b""
        delayer.hold(packet, time.monotonic(), sender)

    queue = NetfilterQueue()
    queue.bind(
        args.queue,
        arrive,
        max_len=args.max_len,
        mode=COPY_PACKET if args.in_order else COPY_META,
        range=IP_HEADER,
        sock_len=SOCKET_BYTES,
    )
    fd = queue.get_fd()
    print("ready", flush=True)
    try:
        while not stopping:
            timeout = delayer.timeout(time.monotonic())
            try:
                readable, _, _ = select.select([fd, wake_r], [], [], timeout)
            except InterruptedError:
                continue
            if fd in readable:
                queue.run(block=False)  # every message waiting, then back here
            for packet in delayer.due(time.monotonic()):
                packet.accept()
            if wake_r in readable:
                os.read(wake_r, 512)
        for packet in delayer.release_all():
            packet.accept()
        stats = {"packets": delayer.packets, "max_held": delayer.max_held}
        stats.update(_kernel_drops(args.queue))
    finally:
        queue.unbind()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

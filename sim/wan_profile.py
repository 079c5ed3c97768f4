"""A WAN profile: what the path between two sites looks like, and how to say it to tc.

Read from the CLI (``delay=40,jitter=10,rate=50,loss=1``), written as netem's or tbf's
arguments; :mod:`sim.wan_shaping` applies it, :mod:`sim.netns` builds the WAN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from sim.errors import SimError

__all__ = ["UNSHAPED", "WanProfile", "number"]

_FRAME_BYTES = 1514  # a full-size Ethernet frame as qdiscs count it (MTU 1500 + header)
_MTU_BITS = 1500 * 8
_UNLIMITED_MBIT = 10_000.0  # roughly what a veth moves when netem sets no rate
_MIN_LIMIT = 1000  # netem's own default, in packets
_TBF_BURST_FRAMES = 4
_TBF_BURST_S = 0.001
# WanProfile.parse: CLI key → (field, the one unit suffix its value may carry)
_KEYS = {
    "delay": ("delay_ms", "ms"),
    "jitter": ("jitter_ms", "ms"),
    "rate": ("rate_mbit", "mbit"),
    "loss": ("loss_pct", "%"),
}


def number(value: float) -> str:
    """A tc/iptables argument without an exponent (1e-05 reads badly)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class WanProfile:
    """What the path between two sites looks like; all zeros means a plain LAN (no shaping).

    ``delay_ms`` is one way (a round trip is twice it, see :mod:`sim.netns`);
    ``rate_mbit`` 0 means no bandwidth limit; ``loss_pct`` is per packet and direction.
    """

    delay_ms: float = 40.0
    jitter_ms: float = 10.0
    rate_mbit: float = 50.0
    loss_pct: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SimError(f"WAN profile: {f.name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise SimError(f"WAN profile: {f.name} must be finite and ≥ 0, not {value!r}")
        if self.loss_pct >= 100:
            raise SimError(f"WAN profile: loss_pct must be below 100, not {self.loss_pct!r}")

    @property
    def shaped(self) -> bool:
        """False for the all-zero profile, which gets no shaping at all."""
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def delayed(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    @classmethod
    def parse(cls, text: str) -> WanProfile:
        """Read a CLI string such as ``"delay=40,jitter=10,rate=50,loss=1"``.

        Units are implied (ms, Mbit/s, %) and may be written (``delay=40ms``, ``loss=1%``);
        keys left out keep their defaults (``WanProfile()``); ``none`` or ``off`` is the
        unshaped profile. A bad string raises SimError naming the part at fault.
        """
        where = f"WAN profile {text!r}"
        spec = text.strip()
        if spec.lower() in ("none", "off"):
            return UNSHAPED
        if not spec:
            raise SimError(f"{where} is empty: expected e.g. delay=40,jitter=10,rate=50,loss=1")
        keys = ", ".join(_KEYS)
        values: dict[str, float] = {}
        for raw in spec.split(","):
            part = raw.strip()
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not key or not value:
                raise SimError(f"{where}: {part!r} is not key=value (keys: {keys})")
            if key.lower() not in _KEYS:
                raise SimError(f"{where}: unknown key {key!r} in {part!r} (keys: {keys})")
            name, unit = _KEYS[key.lower()]
            if name in values:
                raise SimError(f"{where}: {key!r} is given twice ({part!r})")
            number = value[: -len(unit)] if value.lower().endswith(unit) else value
            try:
                values[name] = float(number)
            except ValueError:
                raise SimError(
                    f"{where}: {part!r} is not a number of {unit} (e.g. {key}=1{unit})"
                ) from None
            if not math.isfinite(values[name]) or values[name] < 0:
                raise SimError(f"{where}: {part!r} must be a finite number ≥ 0")
        if values.get("loss_pct", 0.0) >= 100:
            raise SimError(f"{where}: loss must be below 100%")
        return cls(**values)

    def queue_limit(self) -> int:
        """Packets a link may hold, sized so the queue itself never adds loss.

        Netem keeps every packet in its one queue until it is due: all those in the delay
        line (rate × (delay + 4·jitter) worth, the bandwidth-delay product) plus those
        waiting for the rate. The limit counts packets and a full queue tail-drops silently,
        which would be loss the profile never asked for: 50 Mbit/s × 40 ms is already 167
        full-size packets in flight, and a TCP slow-start burst doubles that. So: 2 × BDP
        (one in flight, one of router buffer, the classic sizing), never below netem's
        default 1000. Without a rate the veth's own speed (~10 Gbit/s) stands in for it.
        The nfqueue backend uses the same bound for its delay line and its tbf queue.
        """
        rate_bits = (self.rate_mbit or _UNLIMITED_MBIT) * 1e6
        in_flight_s = (self.delay_ms + 4 * self.jitter_ms) / 1000
        bdp_packets = rate_bits * in_flight_s / _MTU_BITS
        return max(_MIN_LIMIT, math.ceil(2 * bdp_packets))

    def netem_args(self) -> list[str]:
        """Arguments after ``tc qdisc add dev X root netem``; empty when unshaped."""
        if not self.shaped:
            return []
        args = ["limit", str(self.queue_limit())]
        if self.jitter_ms > 0:
            delay, jitter = number(self.delay_ms), number(self.jitter_ms)
            args += ["delay", f"{delay}ms", f"{jitter}ms", "distribution", "normal"]
        elif self.delay_ms > 0:
            args += ["delay", f"{number(self.delay_ms)}ms"]
        if self.rate_mbit > 0:
            args += ["rate", f"{number(self.rate_mbit)}mbit"]
        if self.loss_pct > 0:
            args += ["loss", f"{number(self.loss_pct)}%"]
        return args

    def tbf_args(self) -> list[str]:
        """Arguments after ``tc qdisc add dev X root tbf``; empty without a rate.

        Burst (the bucket, in bytes): netem serializes packet by packet, with no burst at
        all; tbf needs a bucket of at least one frame, and one of a single frame makes
        every packet wait for the qdisc watchdog's wake-up (tens of µs late each time,
        while 50 Mbit/s sends a frame every 240 µs), so the link would run below its
        rate. Four frames, or 1 ms of the rate where that is more (6.25 kB at 50 Mbit/s,
        ≈ 6 kB at 10 Mbit/s): after idle a few packets leave back to back, and over any
        window of a few ms the rate is what the profile says. Limit (bytes waiting for
        tokens): :meth:`queue_limit` frames, netem's own bound, so a burst is queued,
        not tail-dropped as loss the profile never asked for.
        """
        if self.rate_mbit <= 0:
            return []
        burst = max(
            _TBF_BURST_FRAMES * _FRAME_BYTES, math.ceil(self.rate_mbit * 125 * 1000 * _TBF_BURST_S)
        )
        limit = self.queue_limit() * _FRAME_BYTES
        return ["rate", f"{number(self.rate_mbit)}mbit", "burst", str(burst), "limit", str(limit)]


UNSHAPED = WanProfile(0.0, 0.0, 0.0, 0.0)

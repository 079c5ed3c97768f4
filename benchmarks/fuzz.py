"""Everything a peer can send, fuzzed: ≥ 1,000,000 random and mutated inputs (``make bench``).

Streams, each seeded:

- ``bytes``: random byte strings through ``FrameGuard.admit`` (length, msgpack, fields);
- ``frames``: mutated signed frames through the guard and, when admitted, the update
  decoder (signature, replay and round checks);
- ``updates``: mutated update payloads straight into ``decode_update`` (the signature
  would otherwise shield the decoder from most mutations);
- ``key``, ``contrib``, ``sum``, ``receipt``: mutated secure-aggregation payloads,
  validly signed by a neighbour, into a live ``SecureExchange.handle`` (plaintext
  cipher, so that the protocol code, not the cipher, is what is exercised; sums and
  contributions that pass go on to the checks in worker threads, as on a node);
- ``ckks``: mutated CKKS sums (a real SEAL ciphertext under the receiver's key) into
  ``open_envelope`` and decryption, the library's own parser included (fewer: ~ms each).

A crash is any exception other than ``FrameError`` (or ``CryptoError`` where the cipher is
called directly); a mutated frame that is admitted anyway is ``mutated_admitted`` (must
be 0). Memory: process RSS growth over the run, and what the guard and the exchange hold
at the end (bounded whatever is sent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import resource
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import torch

from crypto.cipher import PlaintextCipher, open_envelope
from crypto.errors import CryptoError
from crypto.identity import SiteIdentity
from node.errors import FrameError
from node.exchange.plan import sign_contributors
from node.exchange.secure import SecureExchange
from node.state.backlog import Item
from node.state.membership import Membership
from node.wire.frames import FrameGuard, decode, seal
from node.wire.sealed import basis, pack
from node.wire.update import INCARNATION_BYTES, decode_update, encode_update

DIM = 1058
MAX_BYTES = 64 * 1024
SLOTS = 128


def _mutate(rng: random.Random, data: bytes) -> bytes:
    body = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice(("flip", "cut", "insert", "splice", "int"))
        pos = rng.randrange(max(1, len(body)))
        if op == "flip" and body:
            body[pos] ^= rng.randint(1, 255)
        elif op == "cut":
            del body[pos : pos + rng.randint(1, 64)]
        elif op == "insert":
            body[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif op == "splice":
            body[pos:] = body[pos:][::-1]
        else:  # a msgpack integer/length marker with an extreme value
            body[pos:pos] = rng.choice((b"\xce\xff\xff\xff\xff", b"\xdd\x7f\xff\xff\xff", b"\xd3"))
    return bytes(body)


def _payload(rng: random.Random) -> bytes:
    k = rng.randint(0, 40)
    idx = torch.tensor(rng.sample(range(DIM), k), dtype=torch.int64)
    items = [Item(seq, idx, torch.randn(k)) for seq in range(rng.randint(0, 3))]
    inc = (rng.randbytes(8), rng.randbytes(8))
    return encode_update(DIM, rng.randint(-1, 50), items, None, inc)


class _Stream:
    """Counts outcomes and crashes of one stream."""

    def __init__(self, name: str, crashes: list[str], outcomes: Counter[str]) -> None:
        self.name, self.crashes, self.outcomes = name, crashes, outcomes
        self.inputs = 0

    def run(self, work: Callable[[], str]) -> None:
        self.inputs += 1
        try:
            self.outcomes[f"{self.name}:{work()}"] += 1
        except FrameError as exc:
            self.outcomes[f"{self.name}:{exc.reason}"] += 1
        except Exception as exc:
            self.crashes.append(f"{self.name}: {type(exc).__name__}: {exc}")


def _frames(rng: random.Random, n: int, crashes: list[str], out: Counter[str]) -> FrameGuard:
    alice, bob = SiteIdentity.generate(), SiteIdentity.generate()
    guard = FrameGuard([alice.peer_id, bob.peer_id])
    raw, framed, updates = (_Stream(s, crashes, out) for s in ("bytes", "frames", "updates"))
    last_valid = b""

    def admit(body: bytes, mutated: bool) -> str:
        frame = guard.admit(body, alice.peer_id, MAX_BYTES)
        decode_update(frame.payload, DIM)
        return "mutated_admitted" if mutated else "admitted"

    for i in range(n):
        raw.run(lambda: admit(rng.randbytes(rng.randint(0, 2048)), True))
        roll = rng.random()
        if roll < 0.05:  # some valid frames and replays keep the accepting path exercised
            body = last_valid = seal(alice, guard.round, "update", _payload(rng))
            framed.run(functools.partial(admit, body, False))
        elif roll < 0.07:
            framed.run(functools.partial(admit, last_valid, False))
        else:
            round_ = max(0, guard.round + rng.randint(-6, 6))
            original = seal(alice, round_, "update", _payload(rng))
            body = _mutate(rng, original)  # may be a no-op (a one-byte tail reversed)
            framed.run(functools.partial(admit, body, body != original))
        updates.run(lambda: (decode_update(_mutate(rng, _payload(rng)), DIM), "ok")[1])
        if i % 1000 == 999:
            guard.advance(i // 1000)  # rounds move on, as in a node
    return guard


async def _secure(
    rng: random.Random, n: int, crashes: list[str], out: Counter[str]
) -> dict[str, int]:
    """Mutated key / contrib / sum / receipt payloads into a live exchange of a 4-ring."""
    cipher = PlaintextCipher()
    sites = [SiteIdentity.generate() for _ in range(4)]
    members = tuple(s.peer_id for s in sites)
    membership = Membership(members, "ring", (), 0)
    me, left, across = sites[0], sites[1], sites[2]
    secret = cipher.generate()
    idx = torch.arange(SLOTS)

    async def send(peer: str, body: bytes) -> None:
        return None

    exchange = SecureExchange(
        me,
        cipher,
        secret,
        membership,
        0,
        0.05,
        lambda r: idx,
        torch.zeros(DIM),
        send,
        lambda *a, **k: None,
    )
    exchange.started = True
    keys = {p.peer_id: cipher.generate() for p in sites[1:]}
    for peer, key in keys.items():
        exchange.keys[peer] = key.public
    receiver = sites[3].peer_id  # a neighbour of `left`? the ring 0-1-2-3-0: 1 and 3
    exchange.bases[receiver] = basis(bytes(INCARNATION_BYTES), 0)
    neighbours = exchange.neighbours
    valid: dict[str, tuple[SiteIdentity, Callable[[int], bytes]]] = {
        "key": (left, lambda r: pack({"cipher": "plain", "key": keys[left.peer_id].public.data})),
        "contrib": (
            across,  # 2 is a neighbour of 3, for whom site 0 aggregates some rounds
            lambda r: pack(
                {
                    "to": receiver,
                    "sealed": cipher.encrypt(np.ones(SLOTS), keys[receiver].public).to_bytes(),
                    "base": exchange.bases[receiver],
                }
            ),
        ),
        "sum": (
            left,
            lambda r: _sum(left, me.peer_id, r, neighbours, cipher, secret, exchange.base),
        ),
        "receipt": (left, lambda r: exchange._receipt(left.peer_id, rng.random() < 0.5)),
    }
    streams = {topic: _Stream(topic, crashes, out) for topic in valid}
    for i in range(n):
        exchange.round = i // 50
        for topic, (sender, make) in valid.items():
            payload = make(exchange.round)
            if rng.random() > 0.05:
                payload = _mutate(rng, payload)
            body = seal(sender, exchange.round + rng.randint(-2, 2), topic, payload)

            def handle(b: bytes = body) -> str:
                exchange.handle(decode(b))
                return "accepted"

            streams[topic].run(handle)
        if i % 50 == 49:
            await asyncio.sleep(0)  # let checks and aggregations run, as on a node
            s = torch.zeros(DIM)
            await exchange.resolve(exchange.round - 2, s, torch.zeros(DIM))
    await asyncio.sleep(0.2)
    await exchange.aclose()
    return {
        "buffers": len(exchange.buffers),
        "sums_held": sum(len(v) for v in exchange.sums.values()),
        "tasks": len(exchange.tasks),
    }


def _sum(
    aggregator: SiteIdentity,
    receiver: str,
    round: int,
    neighbours: list[str],
    cipher: Any,
    secret: Any,
    base: bytes,
) -> bytes:
    data = cipher.encrypt(np.full(SLOTS, 0.1), secret.public).to_bytes()
    record = sign_contributors(aggregator, receiver, round, neighbours, neighbours, data, base)
    return pack(record.sum_fields(data))


def _ckks(rng: random.Random, n: int, crashes: list[str], out: Counter[str]) -> None:
    from crypto.ckks import CkksCipher

    cipher = CkksCipher()
    secret = cipher.generate()
    valid = cipher.encrypt(np.full(SLOTS, 0.25), secret.public).to_bytes()
    stream = _Stream("ckks", crashes, out)

    def one() -> str:
        try:
            sealed = open_envelope(_mutate(rng, valid), cipher, secret.public, SLOTS)
            values = cipher.decrypt(sealed, secret)
        except CryptoError as exc:
            return type(exc).__name__
        except (ValueError, RuntimeError):
            return "library_error"  # what the node catches and counts (secure_exchange)
        return "finite" if np.isfinite(values).all() else "non_finite"

    for _ in range(n):
        stream.run(one)


def _moments(rng: random.Random, n: int, crashes: list[str], out: Counter[str]) -> None:
    """The join session's items (node.join_features): decode and check, as a site does."""
    from node.join_features import Item, check_item

    origin = SiteIdentity.generate()
    members = [origin.peer_id, SiteIdentity.generate().peer_id]
    session = b"fuzz session"
    unsigned = Item(
        origin.peer_id, ("age", "size"), b"\1" * 96, {"ward": ("a", "b")}, ("0", "1"), b""
    )
    ours = dataclasses.replace(unsigned, sig=origin.sign(unsigned.signed(session)))
    valid = ours.pack()
    stream = _Stream("moments", crashes, out)

    def one() -> str:
        data = _mutate(rng, valid)
        check_item(Item.unpack(data), ours, members, session)
        return "mutated_admitted" if data != valid else "admitted"

    for _ in range(n):
        stream.run(one)


def run(inputs: int = 1_000_000, seed: int = 0) -> dict[str, Any]:
    """3/5 of ``inputs`` on frames and updates, 2/5 on the secure payloads, 1/10 on the
    join session's moments items, plus inputs/500 CKKS ciphertexts."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    began = time.perf_counter()
    guard = _frames(rng, inputs // 5, crashes, outcomes)
    held = asyncio.run(_secure(rng, inputs // 10, crashes, outcomes))
    _ckks(rng, max(inputs // 500, 10), crashes, outcomes)
    _moments(rng, inputs // 10, crashes, outcomes)
    elapsed = time.perf_counter() - began
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    total = sum(outcomes.values()) + len(crashes)
    per_stream: Counter[str] = Counter()
    for key, count in outcomes.items():
        per_stream[key.split(":")[0]] += count
    return {
        "inputs": total,
        "per_stream": dict(per_stream),
        "crashes": len(crashes),
        "crash_examples": crashes[:5],
        "mutated_admitted": outcomes.get("frames:mutated_admitted", 0)
        + outcomes.get("bytes:mutated_admitted", 0)
        + outcomes.get("moments:mutated_admitted", 0),
        "outcomes": dict(sorted(outcomes.items())),
        "seconds": elapsed,
        "inputs_per_s": total / elapsed,
        "peak_rss_growth_bytes": rss_after - rss_before,
        "guard_nonces_held": guard.nonces_held(),
        "exchange_held": held,
        "msgpack": msgpack.version,
    }


def markdown(report: dict[str, Any]) -> str:
    rows = [
        "# Fuzzing everything a peer can send",
        "",
        f"Measured {report['date']}: {report['inputs']:,} inputs in {report['seconds']:.0f} s "
        f"({report['inputs_per_s']:,.0f}/s).",
        "",
        "| stream | inputs |",
        "|---|---|",
        *(f"| {name} | {count:,} |" for name, count in report["per_stream"].items()),
        "",
        "| measure | value |",
        "|---|---|",
        f"| crashes (any exception but a counted rejection) | {report['crashes']} (target 0) |",
        f"| mutated frames admitted | {report['mutated_admitted']} (target 0) |",
        f"| peak RSS growth | {report['peak_rss_growth_bytes'] / 2**20:.1f} MiB |",
        f"| guard nonces held at the end | {report['guard_nonces_held']} |",
        f"| exchange buffers / sums / tasks held at the end | "
        f"{report['exchange_held']['buffers']} / {report['exchange_held']['sums_held']} / "
        f"{report['exchange_held']['tasks']} |",
    ]
    return "\n".join(rows)


def main() -> None:
    import json
    import sys
    from datetime import date
    from pathlib import Path

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    report = {"date": date.today().isoformat(), **run(count)}
    results = Path(__file__).parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "fuzz.json").write_text(json.dumps(report, indent=2))
    (results / "fuzz.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()

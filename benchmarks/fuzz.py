"""The frame decoder against 100,000+ random and mutated inputs (part of ``make bench``).

Three streams, each seeded: random byte strings and mutated signed frames go through
``FrameGuard.admit`` (length, msgpack, signature, replay and round checks), and mutated
update payloads go straight to ``decode_update``, which the signature would otherwise
shield from most mutations. A crash is any exception other than ``FrameError``; a
mutated frame that is admitted anyway is counted as ``mutated_admitted`` (it must be 0);
memory
is the process RSS growth over the run and the guard's own state.
"""

from __future__ import annotations

import random
import resource
import time
from collections import Counter
from typing import Any

import msgpack
import torch

from crypto.identity import SiteIdentity
from node.backlog import Item
from node.errors import FrameError
from node.frames import FrameGuard, seal
from node.wire import decode_update, encode_update

DIM = 1058
MAX_BYTES = 64 * 1024


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
    return encode_update(DIM, rng.randint(-1, 50), items)


def run(inputs: int = 100_000, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    alice, bob = SiteIdentity.generate(), SiteIdentity.generate()
    guard = FrameGuard([alice.peer_id, bob.peer_id])
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    began = time.perf_counter()
    per_stream = inputs // 2
    last_valid = b""
    for i in range(inputs):
        roll = rng.random()
        mutated = False
        if i < inputs // 2:
            body = rng.randbytes(rng.randint(0, 2048))
        elif roll < 0.05:  # some valid frames and replays keep the accepting path exercised
            body = last_valid = seal(alice, guard.round, "update", _payload(rng))
        elif roll < 0.07:
            body = last_valid
        else:
            body = _mutate(
                rng, seal(alice, guard.round + rng.randint(-6, 3), "update", _payload(rng))
            )
        try:
            frame = guard.admit(body, alice.peer_id, MAX_BYTES)
            decode_update(frame.payload, DIM)
            outcomes["mutated_admitted" if mutated else "admitted"] += 1
        except FrameError as exc:
            outcomes[exc.reason] += 1
        except Exception as exc:
            crashes.append(f"{type(exc).__name__}: {exc}")
        if i % 1000 == 999:
            guard.advance(i // 1000)  # rounds move on, as in a node
    for _ in range(per_stream):
        payload = _mutate(rng, _payload(rng))
        try:
            decode_update(payload, DIM)
            outcomes["payload_ok"] += 1
        except FrameError as exc:
            outcomes[f"payload_{exc.reason}"] += 1
        except Exception as exc:
            crashes.append(f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - began
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    total = inputs + per_stream
    return {
        "inputs": total,
        "frame_inputs": inputs,
        "payload_inputs": per_stream,
        "crashes": len(crashes),
        "crash_examples": crashes[:5],
        "outcomes": dict(outcomes),
        "seconds": elapsed,
        "inputs_per_s": total / elapsed,
        "peak_rss_growth_bytes": rss_after - rss_before,
        "guard_nonces_held": guard.nonces_held(),
        "msgpack": msgpack.version,
    }

"""``make bench`` (CKKS): encrypt + serialize and decrypt throughput per core, bytes per value,
and the aggregation error against plaintext. Writes ``benchmarks/results/crypto.{json,md}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crypto.ckks import DESCRIPTION, CkksCipher

RESULTS = Path(__file__).parent / "results"
VALUES = 4096 * 100


def measure(repeats: int = 3) -> dict[str, Any]:
    torch.set_num_threads(1)
    cipher = CkksCipher()
    secret = cipher.generate()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, VALUES)
    cipher.encrypt(x[:4096], secret.public)  # warm-up
    encrypt_s = decrypt_s = float("inf")
    wire = b""
    for _ in range(repeats):
        began = time.perf_counter()
        sealed = cipher.encrypt(x, secret.public)
        wire = sealed.to_bytes()
        encrypt_s = min(encrypt_s, time.perf_counter() - began)
        began = time.perf_counter()
        cipher.decrypt(sealed, secret)
        decrypt_s = min(decrypt_s, time.perf_counter() - began)
    parts = [rng.uniform(-1, 1, 4096) for _ in range(4)]
    total = cipher.add([cipher.encrypt(p, secret.public) for p in parts], secret.public)
    error = float(np.abs(cipher.decrypt(total, secret) - sum(parts)).max())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "values": VALUES,
        "encrypt_serialize_values_per_s": VALUES / encrypt_s,
        "decrypt_values_per_s": VALUES / decrypt_s,
        "bytes_per_value": len(wire) / VALUES,
        "sum_of_4_max_abs_error": error,
    }


def main() -> None:
    report = measure()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "crypto.json").write_text(json.dumps(report, indent=2))
    md = "\n".join(
        [
            "# CKKS benchmarks (one core)",
            "",
            f"Measured {report['date']}; {DESCRIPTION}, two values per complex slot; best of 3.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| encrypt + serialize | {report['encrypt_serialize_values_per_s'] / 1e6:.2f} M "
            "values/s (target ≥ 1.5) |",
            f"| decrypt (framing check + parse + decrypt) | "
            f"{report['decrypt_values_per_s'] / 1e6:.2f} M values/s (target ≥ 5) |",
            f"| bytes per value on the wire | {report['bytes_per_value']:.1f} |",
            f"| sum of 4 ciphertexts, max abs error vs plaintext | "
            f"{report['sum_of_4_max_abs_error']:.1e} (target ≤ 1e-6) |",
        ]
    )
    (RESULTS / "crypto.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()

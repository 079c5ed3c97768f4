"""Random tamperings of an audit log, for the tests and ``make bench`` (benchmarks.audit).

Each is something a site (or whoever holds its disk) might do to its own log after the
fact: edit an entry and keep its signature, re-sign an edited entry with another key,
delete one, swap two, cut whole entries off the end, or cut the log partway through an
entry. Each returns the index of the first entry :func:`node.audit.check.verify` must
name.
"""

from __future__ import annotations

import json
import random

from crypto.identity import SiteIdentity
from node.audit.log import digest


def random_tampering(lines: list[str], rng: random.Random) -> tuple[str, list[str], int]:
    """One random tampering: (kind, the tampered lines, the index of the first bad entry)."""
    n = len(lines)
    kind = rng.choice(["edit", "resign", "delete", "reorder", "truncate", "cut"])
    out = list(lines)
    if kind == "edit":  # change a value, keep the old signature
        i = rng.randrange(n)
        entry = json.loads(out[i])
        entry["data"]["tampered"] = rng.randrange(10**6)
        out[i] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        return kind, out, i
    if kind == "resign":  # a stranger re-signs an edited entry
        i = rng.randrange(n)
        entry = json.loads(out[i])
        entry["kind"] = "forged"
        entry["sig"] = SiteIdentity.generate().sign(digest(entry)).hex()
        out[i] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        return kind, out, i
    if kind == "delete":
        i = rng.randrange(n)
        del out[i]
        return kind, out, i
    if kind == "reorder":
        i, j = sorted(rng.sample(range(n), 2))
        out[i], out[j] = out[j], out[i]
        return kind, out, i
    if kind == "truncate":  # whole entries off the end
        k = rng.randrange(1, n)
        return kind, out[: n - k], n - k
    i = rng.randrange(n)  # cut: the log ends partway through an entry
    line = out[i]
    return kind, [*out[:i], line[: rng.randrange(1, len(line))]], i

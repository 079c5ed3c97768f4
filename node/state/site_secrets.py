"""Per-site secrets that must never be derived from a config: the DP generators' seed.

DP-SGD's guarantee rests on the noise being unknown to whoever sees the update. A seed
computed from the consortium's public seed and the site's index lets any member
regenerate the exact noise, subtract it and read the clipped gradient sums. So a node
draws its DP seed from the OS CSPRNG on first start and keeps it in a 0600 file in its
state directory (the generators' running state lives in the 0600 checkpoint); it never
appears in a config, a log or a frame. The simulator, whose point is reproducible runs,
keeps seeding DP from its public ``--seed`` and says so.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from crypto.errors import KeyFileError
from crypto.keyfile import read_secret, write_secret
from node.errors import ConfigError
from node.state.checkpoint import private_dir

SEED_BYTES = 32
SEED_FILE = "dp.seed"
# torch generators take a 64-bit seed; rows add small offsets to it, so keep headroom.
SEED_BITS = 62


def dp_seed(state_dir: Path) -> int:
    """This site's secret DP seed: created (CSPRNG, 0600, fsynced) on first use, read after."""
    path = state_dir / SEED_FILE
    try:
        if not path.exists():
            private_dir(state_dir)
            write_secret(path, secrets.token_bytes(SEED_BYTES), what="DP seed")
        raw = read_secret(path)
    except KeyFileError as exc:
        raise ConfigError(f"DP seed: {exc}") from None
    if len(raw) != SEED_BYTES:
        raise ConfigError(
            f"DP seed {path} holds {len(raw)} bytes, not {SEED_BYTES}: it is damaged; a site "
            "that has spent budget cannot start over with a new seed, restore it from backup"
        )
    return int.from_bytes(raw[:8], "big") >> (64 - SEED_BITS)

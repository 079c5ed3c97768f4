"""``murmur keys``: rotating a site's encryption key, and accepting a neighbour's new one.

A site's CKKS key is pinned by its neighbours on first contact and a different key is
refused afterwards (a stolen site key must not be enough to swap in an encryption key
someone else holds). Rotation is therefore a procedure, run with the nodes stopped:

1. on the rotating site: ``murmur keys rotate --config site.toml``: the old key is kept
   as ``encryption.key.retired-<UTC time>`` (0600) and a new one written (0600, fsynced);
   it prints the new key id;
2. on each of its neighbours: ``murmur keys unpin --config site.toml --peer <its peer
   ID>``: the pinned key is dropped from the checkpoint, so the next one presented (the
   new key, which arrives signed by the site key) is pinned instead;
3. restart. Sums still in flight under the old key are refused and their contributions
   stay owed on their links, so every running sum stays exact.

A site that lost its key does step 1 too (there is nothing to retire), never starts with
a silently regenerated key: its neighbours would refuse it, and it could not tell why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from crypto.cipher import cipher_by_name
from murmur.files import sync_directory
from node.config import NodeConfig
from node.errors import ConfigError
from node.state import checkpoint

KEY_FILE = "encryption.key"
CHECKPOINT_FILE = "checkpoint.pt"


def encryption_key_path(config: NodeConfig) -> Path:
    return config.site.state_dir / KEY_FILE


def rotate(config: NodeConfig) -> str:
    """Retire the site's encryption key (if any) and write a new one; its key id (hex)."""
    if config.gossip.secure == "off":
        raise ConfigError(f"{config.path}: [gossip] secure is off; there is no encryption key")
    cipher = cipher_by_name(config.gossip.secure)
    path = encryption_key_path(config)
    checkpoint.private_dir(config.site.state_dir)
    if path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.replace(path, path.with_name(f"{KEY_FILE}.retired-{stamp}"))
        sync_directory(path.parent)
    secret = cipher.generate()
    cipher.save(secret, path)
    return secret.public.key_id.hex()


def unpin(config: NodeConfig, peer: str) -> bool:
    """Forget the encryption key pinned for ``peer``; False if none was pinned."""
    ckpt = config.site.state_dir / CHECKPOINT_FILE
    saved = checkpoint.load(ckpt)
    if saved is None:
        return False
    saved = checkpoint.upgrade(saved, plaintext=config.gossip.secure == "off")
    if saved["exchange"] is None or "keys" not in saved["exchange"]:
        return False
    keys = saved["exchange"]["keys"]
    if peer not in keys:
        return False
    del keys[peer]
    checkpoint.save(ckpt, saved)
    return True


def require_key(config: NodeConfig) -> None:
    """Refuse to start secure aggregation without the key a checkpoint was made with."""
    path = encryption_key_path(config)
    if path.exists() or not (config.site.state_dir / CHECKPOINT_FILE).exists():
        return
    raise ConfigError(
        f"encryption key {path} is missing, but this site has a checkpoint: its neighbours "
        "have pinned the lost key and would refuse a new one. Restore the key from backup, "
        "or rotate: `murmur keys rotate --config <site.toml>` here and `murmur keys unpin "
        "--config <their site.toml> --peer <this peer ID>` on each neighbour"
    )

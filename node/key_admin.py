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

Both steps take the state directory's lock (:mod:`node.state.lock`), so they refuse to
run beside a live node, and each leaves a signed entry in the site's audit log
(``key_rotated`` with the new key id and the retired file, ``key_unpinned`` with the
neighbour), beside the ``key_pinned`` entry the node writes when it pins the new key.

A site that lost its key does step 1 too (there is nothing to retire), never starts with
a silently regenerated key: its neighbours would refuse it, and it could not tell why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from crypto.cipher import cipher_by_name
from crypto.identity import load_key
from murmur.files import sync_directory
from node.audit.log import AuditLog
from node.config import NodeConfig
from node.errors import ConfigError
from node.state import checkpoint
from node.state.lock import state_lock

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
    with state_lock(config.site.state_dir, "murmur keys rotate"):
        retired = None
        if path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            retired = path.with_name(f"{KEY_FILE}.retired-{stamp}")
            os.replace(path, retired)
            sync_directory(path.parent)
        secret = cipher.generate()
        cipher.save(secret, path)
        key_id = secret.public.key_id.hex()
        _audit(config, "key_rotated", key_id=key_id, retired=retired and retired.name)
    return key_id


def unpin(config: NodeConfig, peer: str) -> bool:
    """Forget the encryption key pinned for ``peer``; False if none was pinned."""
    ckpt = config.site.state_dir / CHECKPOINT_FILE
    with state_lock(config.site.state_dir, "murmur keys unpin"):
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
        _audit(config, "key_unpinned", peer=peer)
    return True


def _audit(config: NodeConfig, kind: str, **data: Any) -> None:
    """One signed entry in the site's audit log (the caller holds the state lock), after
    the entries a crashed node's checkpoint still holds for it (node.audit.log)."""
    log = AuditLog(config.site.state_dir, load_key(config.site.key))
    saved = checkpoint.load(config.site.state_dir / CHECKPOINT_FILE)
    log.recover((saved or {}).get("audit_tail", ""))
    log.append(kind, **data)
    log.close()


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

"""Site identities: one Ed25519 key per site, its libp2p peer ID, and frame signatures.

The same 32-byte seed is the site's libp2p identity (Noise authenticates the connection
with it) and the key that signs every frame, so the consortium allowlist of peer IDs is
also the list of verification keys: an Ed25519 peer ID embeds its public key (identity
multihash), and :func:`public_key_from_peer_id` recovers it without any directory.

The key file is written with mode 0600 and refused when group or others can read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

from crypto.errors import BadSignatureError, KeyFileError
from crypto.keyfile import read_secret, write_secret

KEY_HEADER = "murmur-site-key ed25519 v1"
SEED_BYTES = 32
SIGNATURE_BYTES = 64
# libp2p PublicKey protobuf for Ed25519: field 1 (type) = 1, field 2 (data) = 32 bytes.
_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# identity multihash (code 0x00) of the 36-byte protobuf.
_MULTIHASH_PREFIX = bytes([0x00, len(_PROTO_PREFIX) + SEED_BYTES])
# Every Ed25519 peer ID has this many base58 characters (the fixed prefix sets the
# magnitude); byte counts of frames, which carry the sender's ID, rely on it.
PEER_ID_CHARS = 52


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (base58btc, ``12D3KooW…``) of an Ed25519 public key."""
    if len(public_key) != SEED_BYTES:
        raise BadSignatureError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return base58.b58encode(_MULTIHASH_PREFIX + _PROTO_PREFIX + public_key).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a peer ID; other key types are refused."""
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadSignatureError(f"{peer_id!r} is not a base58 peer ID") from None
    prefix = _MULTIHASH_PREFIX + _PROTO_PREFIX
    if len(raw) != len(prefix) + SEED_BYTES or not raw.startswith(prefix):
        raise BadSignatureError(f"{peer_id!r} is not an Ed25519 peer ID (expected 12D3KooW…)")
    return raw[len(prefix) :]


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignatureError` unless ``signature`` is the key's over ``message``."""
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignatureError(f"a signature has 64 bytes, got {len(signature)}")
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        raise BadSignatureError("signature does not verify") from None


@dataclass(frozen=True)
class SiteIdentity:
    """A site's Ed25519 key: signs frames; its seed also makes the libp2p key pair."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise KeyFileError(f"an Ed25519 seed has 32 bytes, got {len(self.seed)}")

    @classmethod
    def generate(cls) -> SiteIdentity:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @functools.cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:
        # Deriving the key pair from the seed is a scalar multiplication, as costly as a
        # signature: done once, not for every frame and audit entry signed.
        return nacl.signing.SigningKey(self.seed)

    @functools.cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @functools.cached_property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature


def write_key(path: Path, identity: SiteIdentity, overwrite: bool = False) -> None:
    """Write the site key with mode 0600; an existing file is kept unless ``overwrite``
    (a new key is a new peer ID, locked out of the consortium)."""
    text = f"{KEY_HEADER}\n{identity.seed.hex()}\n"
    write_secret(path, text.encode("ascii"), overwrite, what="site key")


def load_key(path: Path) -> SiteIdentity:
    """Read a key file written by :func:`write_key`, refusing unsafe permissions."""
    data = read_secret(path, hint=" (create one with murmur keygen)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a Murmur site key (not ASCII)") from None
    lines = text.strip().splitlines()
    if len(lines) != 2 or lines[0].strip() != KEY_HEADER:
        raise KeyFileError(f"{path} is not a Murmur site key ({KEY_HEADER!r} header missing)")
    try:
        seed = bytes.fromhex(lines[1].strip())
    except ValueError:
        raise KeyFileError(f"{path}: the seed is not hexadecimal") from None
    return SiteIdentity(seed)

"""The ``Cipher`` interface for secure neighbourhood aggregation, and its plaintext twin.

Every site has its own key pair. A contributor encrypts under the *receiver's* public
key; the round's aggregator adds ciphertexts it cannot read; only the receiver decrypts,
and only sums. ``Sealed`` is the one wire form for every cipher:

``{"v": 1, "cipher": name, "params": fingerprint, "key": key id, "n": values,
"chunks": [bytes, ...]}`` (msgpack). The envelope is checked (size first, then shape,
cipher, parameters, key id and chunk count) before any chunk reaches the cipher's own
parser, so bad bytes fail with ``MalformedCiphertextError`` and a wrong-key ciphertext
with ``KeyMismatchError``, never inside the cryptographic library.

``PlaintextCipher`` has the same interface and the same checks with float64 chunks, so
every protocol test runs fast; it hides nothing and says so in its name.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgpack
import numpy as np
from numpy.typing import NDArray

from crypto.errors import (
    KeyFileError,
    KeyMismatchError,
    MalformedCiphertextError,
    UnknownCipherError,
)
from crypto.keyfile import read_secret, write_secret
from murmur import bounded_msgpack
from murmur.registry import Registry

ENVELOPE_VERSION = 1
PLAIN_HEADER = b"murmur-plain-key v1\n"


def key_id_of(public_bytes: bytes) -> bytes:
    """16 bytes naming a public key; pinned with the peer ID, carried by every ciphertext."""
    return hashlib.sha256(public_bytes).digest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A site's public encryption key as published (``data``) and its id."""

    data: bytes = field(repr=False)
    key_id: bytes
    handle: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SecretKey:
    """A site's key pair; never leaves the site."""

    public: PublicKey
    handle: object = field(repr=False, compare=False)


@dataclass(frozen=True)
class Sealed:
    """``count`` values encrypted under the key ``key_id``, in ``chunks``."""

    cipher: str
    params: bytes
    key_id: bytes
    count: int
    chunks: tuple[bytes, ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "v": ENVELOPE_VERSION,
                "cipher": self.cipher,
                "params": self.params,
                "key": self.key_id,
                "n": self.count,
                "chunks": list(self.chunks),
            }
        )
        return packed


class Cipher(Protocol):
    """Additively homomorphic encryption under per-site keys; see the module docstring."""

    name: str
    params: bytes  # fingerprint of the parameters every site must share
    slots: int  # values per chunk
    max_chunk_bytes: int

    def generate(self) -> SecretKey: ...

    def public_key(self, data: bytes) -> PublicKey:
        """Parse and check a peer's published public key."""
        ...

    def encrypt(self, values: NDArray[np.float64], key: PublicKey) -> Sealed: ...

    def add(self, parts: Sequence[Sealed], key: PublicKey) -> Sealed:
        """The sum of ciphertexts under ``key``, computed without any secret key."""
        ...

    def decrypt(self, sealed: Sealed, secret: SecretKey) -> NDArray[np.float64]: ...

    def save(self, secret: SecretKey, path: Path, overwrite: bool = False) -> None:
        """Write the key pair to a 0600 file (refusing to overwrite unless asked)."""
        ...

    def load(self, path: Path) -> SecretKey: ...


def open_envelope(data: bytes, cipher: Cipher, key: PublicKey, count: int) -> Sealed:
    """Check received bytes against the cipher, its parameters, ``key`` and ``count``
    before a single chunk is parsed."""
    chunks = -(-count // cipher.slots)
    limit = chunks * (cipher.max_chunk_bytes + 16) + 256
    if len(data) > limit:
        raise MalformedCiphertextError(
            f"ciphertext of {len(data):,} bytes exceeds the {limit:,} bytes {count} values need"
        )
    raw = bounded_msgpack.unpack(
        data,
        MalformedCiphertextError,
        "ciphertext envelope",
        max_array_len=max(chunks, 1),
        max_map_len=8,
    )
    keys = {"v", "cipher", "params", "key", "n", "chunks"}
    if not isinstance(raw, dict) or set(raw) != keys or type(raw["v"]) is not int:
        raise MalformedCiphertextError("ciphertext envelope has the wrong fields")
    if raw["v"] != ENVELOPE_VERSION or type(raw["n"]) is not int:
        raise MalformedCiphertextError("ciphertext envelope has the wrong fields or version")
    if raw["cipher"] != cipher.name or raw["params"] != cipher.params:
        raise MalformedCiphertextError(
            f"ciphertext is for {raw['cipher']!r} with other parameters; expected {cipher.name!r}"
        )
    if raw["key"] != key.key_id:
        raise KeyMismatchError("ciphertext is under another site's key")
    if raw["n"] != count or not isinstance(raw["chunks"], list) or len(raw["chunks"]) != chunks:
        raise MalformedCiphertextError(f"ciphertext does not hold {count} values")
    if not all(isinstance(c, bytes) and len(c) <= cipher.max_chunk_bytes for c in raw["chunks"]):
        raise MalformedCiphertextError("a ciphertext chunk is not bytes or is too large")
    return Sealed(cipher.name, cipher.params, key.key_id, count, tuple(raw["chunks"]))


def check_parts(parts: Sequence[Sealed], key: PublicKey) -> int:
    """Parts to add must exist, all be under ``key`` and hold the same number of values."""
    if not parts:
        raise ValueError("nothing to add")
    if any(p.key_id != key.key_id for p in parts):
        raise KeyMismatchError("ciphertexts under different keys cannot be added")
    counts = {p.count for p in parts}
    if len(counts) != 1:
        raise MalformedCiphertextError(f"ciphertexts of different lengths {sorted(counts)}")
    return counts.pop()


class PlaintextCipher:
    """The fast stand-in for tests and the plaintext mode: float64 values, no secrecy."""

    name = "plain"
    params = b"plain-f64-v1"
    slots = 4096
    max_chunk_bytes = 8 * 4096

    def generate(self) -> SecretKey:
        public = secrets.token_bytes(32)
        return SecretKey(PublicKey(public, key_id_of(public)), handle=None)

    def public_key(self, data: bytes) -> PublicKey:
        if len(data) != 32:
            raise KeyMismatchError(f"a plaintext public key has 32 bytes, got {len(data)}")
        return PublicKey(data, key_id_of(data))

    def encrypt(self, values: NDArray[np.float64], key: PublicKey) -> Sealed:
        flat = np.asarray(values, dtype="<f8").reshape(-1)
        chunks = tuple(flat[i : i + self.slots].tobytes() for i in range(0, len(flat), self.slots))
        return Sealed(self.name, self.params, key.key_id, len(flat), chunks)

    def add(self, parts: Sequence[Sealed], key: PublicKey) -> Sealed:
        check_parts(parts, key)
        total = sum(self._values(p) for p in parts)
        return self.encrypt(np.asarray(total), key)

    def decrypt(self, sealed: Sealed, secret: SecretKey) -> NDArray[np.float64]:
        if sealed.key_id != secret.public.key_id:
            raise KeyMismatchError("ciphertext is under another site's key")
        return self._values(sealed)

    def save(self, secret: SecretKey, path: Path, overwrite: bool = False) -> None:
        write_secret(path, PLAIN_HEADER + secret.public.data, overwrite, what="plaintext key")

    def load(self, path: Path) -> SecretKey:
        data = read_secret(path)
        if not data.startswith(PLAIN_HEADER) or len(data) != len(PLAIN_HEADER) + 32:
            raise KeyFileError(f"{path} is not a Murmur plaintext-cipher key")
        return SecretKey(self.public_key(data[len(PLAIN_HEADER) :]), handle=None)

    def _values(self, sealed: Sealed) -> NDArray[np.float64]:
        values = np.frombuffer(b"".join(sealed.chunks), dtype="<f8")
        if len(values) != sealed.count:
            raise MalformedCiphertextError(f"ciphertext does not hold {sealed.count} values")
        return values.astype(np.float64)


CIPHERS: Registry[Callable[[], Cipher]] = Registry("cipher", UnknownCipherError)


def register_cipher(name: str, factory: Callable[[], Cipher]) -> None:
    """Make ``[gossip] secure = name`` / ``--secure name`` build a cipher with ``factory``."""
    CIPHERS.register(name, factory)


def _ckks() -> Cipher:
    from crypto.ckks import CkksCipher  # only when asked for: plaintext runs skip TenSEAL

    return CkksCipher()


register_cipher("ckks", _ckks)
register_cipher("plain", PlaintextCipher)


def cipher_by_name(name: str) -> Cipher:
    """The cipher a ``--secure`` / ``[gossip] secure`` value names."""
    return CIPHERS.get(name)()

"""CKKS through TenSEAL — the only module of Murmur that imports TenSEAL.

Parameters: N = 8192, coefficient moduli [60, 60] bits (120 ≤ 218 bits: 128-bit security
by the HE standard), scale 2^40. Only additions are needed, so a published public key
carries no Galois or relinearisation keys (:meth:`CkksCipher.generate` keeps them out of
every serialization). One ciphertext holds 4,096 values at about 32 bytes per value;
longer vectors are split into as few ciphertexts as fit.

The 60-bit data prime over a 2^40 scale leaves 2^19 of headroom, far above the
magnitudes that are ever added (weighted model updates, sums of a few neighbours).

Received ciphertexts go through :func:`crypto.cipher.open_envelope` and then a check of
each chunk's TenSEAL framing (value count, SEAL magic and declared size, scale) before
TenSEAL parses it; SEAL then checks that the ciphertext belongs to our parameters. Any
failure is a ``MalformedCiphertextError`` and the caller goes on.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tenseal as ts
from numpy.typing import NDArray

from crypto.cipher import PublicKey, Sealed, SecretKey, check_parts, key_id_of
from crypto.errors import KeyFileError, KeyMismatchError, MalformedCiphertextError
from crypto.keyfile import read_secret, write_secret

POLY_MODULUS = 8192
COEFF_BITS = (60, 60)
SCALE = 2.0**40
SLOTS = POLY_MODULUS // 2
SEAL_MAGIC = 0xA15E
# One ciphertext at the data level: 2 polynomials x N coefficients x 8 bytes, + framing.
MAX_CHUNK_BYTES = 2 * POLY_MODULUS * 8 + 512
MAX_PUBLIC_KEY_BYTES = 4 * 2 * POLY_MODULUS * 8 * len(COEFF_BITS)
SECRET_HEADER = b"murmur-ckks-secret v1\n"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MalformedCiphertextError("ciphertext framing is truncated")


def check_chunk(chunk: bytes, count: int) -> None:
    """TenSEAL's CKKSVector framing: the value count (a packed varint field), the SEAL
    ciphertext bytes, the scale as a double."""
    if len(chunk) < 32 or chunk[0] != 0x0A:
        raise MalformedCiphertextError("ciphertext chunk does not start with its value count")
    field_length, pos = _varint(chunk, 1)
    size, end = _varint(chunk, pos)
    if end != pos + field_length:
        raise MalformedCiphertextError("ciphertext chunk has a malformed value count")
    pos = end
    if size != count:
        raise MalformedCiphertextError(f"ciphertext chunk holds {size} values, expected {count}")
    if pos >= len(chunk) or chunk[pos] != 0x12:
        raise MalformedCiphertextError("ciphertext chunk has no SEAL ciphertext")
    length, pos = _varint(chunk, pos + 1)
    body = chunk[pos : pos + length]
    if len(body) != length or length < 16:
        raise MalformedCiphertextError("SEAL ciphertext is truncated")
    magic, header, major, _minor, _compression, _reserved, declared = struct.unpack_from(
        "<HBBBBHQ", body
    )
    if magic != SEAL_MAGIC or header != 16 or major != 4 or declared != length:
        raise MalformedCiphertextError("SEAL ciphertext header is wrong")
    tail = chunk[pos + length :]
    if len(tail) != 9 or tail[0] != 0x19 or struct.unpack("<d", tail[1:])[0] != SCALE:
        raise MalformedCiphertextError("ciphertext scale is not 2^40")


def check_parameters(context: ts.Context) -> str | None:
    """What is wrong with a context's parameters (N, moduli, scale), or None. A key with
    another N makes every ciphertext another size (N = 16384 exceeds the chunk limit and
    every contribution would be refused), other moduli another security level."""
    data = context.seal_context().data.key_context_data()
    parms = data.parms()
    found = (
        f"N = {parms.poly_modulus_degree()}, {data.chain_index() + 1} moduli of "
        f"{data.total_coeff_modulus_bit_count()} bits, scale 2^{np.log2(context.global_scale):g}"
    )
    if (
        parms.scheme().name != "CKKS"
        or parms.poly_modulus_degree() != POLY_MODULUS
        or data.chain_index() + 1 != len(COEFF_BITS)
        or data.total_coeff_modulus_bit_count() != sum(COEFF_BITS)
        or context.global_scale != SCALE
    ):
        return f"{found}; Murmur uses N = {POLY_MODULUS}, moduli {list(COEFF_BITS)}, scale 2^40"
    return None


class CkksCipher:
    """Per-site CKKS keys; encrypt under a peer's public key, add, decrypt our own sums."""

    name = "ckks"
    params = hashlib.sha256(repr((POLY_MODULUS, COEFF_BITS, SCALE)).encode()).digest()[:8]
    slots = SLOTS
    max_chunk_bytes = MAX_CHUNK_BYTES

    def generate(self) -> SecretKey:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS, POLY_MODULUS, coeff_mod_bit_sizes=list(COEFF_BITS)
        )
        context.global_scale = SCALE
        return self._secret(context)

    def _secret(self, context: ts.Context) -> SecretKey:
        public = context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return SecretKey(self.public_key(public), handle=context)

    def public_key(self, data: bytes) -> PublicKey:
        if not 0 < len(data) <= MAX_PUBLIC_KEY_BYTES:
            raise KeyMismatchError(f"a CKKS public key of {len(data):,} bytes is out of range")
        try:
            context = ts.context_from(data)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise KeyMismatchError(f"not a CKKS public key: {exc}") from None
        if context.has_secret_key() or context.has_galois_keys() or context.has_relin_keys():
            raise KeyMismatchError("a published CKKS key must hold the public key only")
        if not context.has_public_key():
            raise KeyMismatchError("a published CKKS key must hold a public key")
        wrong = check_parameters(context)
        if wrong is not None:
            raise KeyMismatchError(f"CKKS public key has other parameters: {wrong}")
        return PublicKey(data, key_id_of(data), handle=context)

    def encrypt(self, values: NDArray[np.float64], key: PublicKey) -> Sealed:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        context = key.handle
        assert isinstance(context, ts.Context)
        chunks = tuple(
            ts.ckks_vector(context, flat[i : i + SLOTS]).serialize()
            for i in range(0, len(flat), SLOTS)
        )
        return Sealed(self.name, self.params, key.key_id, len(flat), chunks)

    def _load(self, sealed: Sealed, context: ts.Context) -> list[ts.CKKSVector]:
        vectors = []
        for i, chunk in enumerate(sealed.chunks):
            count = min(SLOTS, sealed.count - i * SLOTS)
            check_chunk(chunk, count)
            try:
                vectors.append(ts.ckks_vector_from(context, chunk))
            except (ValueError, RuntimeError, TypeError) as exc:
                raise MalformedCiphertextError(f"ciphertext rejected by SEAL: {exc}") from None
        return vectors

    def add(self, parts: Sequence[Sealed], key: PublicKey) -> Sealed:
        check_parts(parts, key)
        context = key.handle
        assert isinstance(context, ts.Context)
        total = self._load(parts[0], context)
        for part in parts[1:]:
            for acc, vector in zip(total, self._load(part, context), strict=True):
                try:
                    acc.add_(vector)
                except (ValueError, RuntimeError) as exc:  # e.g. SEAL's scale mismatch
                    raise MalformedCiphertextError(f"ciphertexts cannot be added: {exc}") from None
        chunks = tuple(v.serialize() for v in total)
        return Sealed(self.name, self.params, key.key_id, parts[0].count, chunks)

    def decrypt(self, sealed: Sealed, secret: SecretKey) -> NDArray[np.float64]:
        if sealed.key_id != secret.public.key_id:
            raise KeyMismatchError("ciphertext is under another site's key")
        context = secret.handle
        assert isinstance(context, ts.Context)
        if not context.has_secret_key():
            raise KeyMismatchError("this key holds no secret key: it cannot decrypt")
        out = [np.asarray(v.decrypt(), dtype=np.float64) for v in self._load(sealed, context)]
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, secret: SecretKey, path: Path, overwrite: bool = False) -> None:
        """The secret key file, mode 0600 (public key included, nothing else)."""
        context = secret.handle
        assert isinstance(context, ts.Context)
        data = context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        write_secret(path, SECRET_HEADER + data, overwrite, what="CKKS secret key")

    def load(self, path: Path) -> SecretKey:
        data = read_secret(path)
        if not data.startswith(SECRET_HEADER):
            raise KeyFileError(f"{path} is not a Murmur CKKS secret key")
        try:
            context = ts.context_from(data[len(SECRET_HEADER) :])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise KeyFileError(f"{path}: unreadable CKKS key: {exc}") from None
        if not context.has_secret_key():
            raise KeyFileError(f"{path}: not a CKKS secret key")
        wrong = check_parameters(context)
        if wrong is not None:
            raise KeyFileError(f"{path}: CKKS key with other parameters: {wrong}")
        return self._secret(context)

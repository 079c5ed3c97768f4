"""CKKS through Microsoft SEAL as TenSEAL ships it (``tenseal.sealapi``) — the only module of
Murmur that imports TenSEAL.

**Parameters.** N = 4096, one 60-bit coefficient modulus (60 ≤ 109 bits: 128-bit security
by the HE standard), scale 2^40. Murmur only ever adds ciphertexts, so it needs neither key
switching (no special prime, no Galois or relinearisation keys) nor rescaling (one level).
The 60-bit modulus over a 2^40 scale leaves 2^19 of headroom, far above the magnitudes
that are ever added (weighted model updates, sums of a few neighbours; a receiver refuses
sums beyond ``SUM_LIMIT``, and :data:`MAX_VALUE` bounds what is encrypted). A fresh
encryption decrypts within about 1e-7 of its value.

**Packing.** A ciphertext has N/2 = 2,048 complex slots. A chunk of up to 4,096 values puts
its first half in the real parts and its second half in the imaginary parts: addition is
slot-wise complex addition, so both halves add exactly as reals would. 4,096 values per
ciphertext at 16 bytes per value.

**Why not TenSEAL's CKKSVector.** It packs reals only (half the slots) and insists on a
key-switching prime, so every encryption works over two primes and is then switched down:
at N = 8192 with [60, 60] bits that was 32 bytes per value and, measured back to back on
one core, 2.5× the encryption time per value of these parameters.

**Wire form.** SEAL's own serialization of a ciphertext, uncompressed: SEAL compresses
what it saves with zstd, and Murmur inflates its own output before sending. Everything
in a ciphertext or public key before its coefficients (SEAL's outer header and the inner
one of the coefficient array, each with a compression mode and size; parms id, NTT flag,
size, degree, moduli, scale, correction factor) is fixed by these parameters, so a
received chunk must be exactly one ciphertext long and begin with exactly those bytes.
No compressed data and no other header variant ever reaches SEAL's loader, and a key
has one byte form (its id is a hash of it). SEAL then checks that every coefficient is
below the modulus; Murmur checks size 2, NTT form, parms id and scale of what it loaded.
Any failure is a ``MalformedCiphertextError`` (``KeyMismatchError`` for a key) and the
caller goes on. A contribution's values must be finite and at most 2^14 in magnitude
(:data:`MAX_VALUE`): SEAL refuses to encode values from about 2^18, and 32 such values
still sum inside the modulus.

**Scratch files.** The bindings save and load SEAL objects only through a file path, so
each thread of each process passes them through its own anonymous in-memory file
(``memfd``; a private 0700 temporary directory where the OS has none), emptied after
every use and closed when its thread ends; a forked worker never shares its parent's.
On Linux nothing, secret keys included, goes to disk except the 0600 key file itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tenseal.sealapi as seal
import zstandard
from numpy.typing import NDArray

from crypto.cipher import PublicKey, Sealed, SecretKey, check_parts, key_id_of
from crypto.errors import KeyFileError, KeyMismatchError, MalformedCiphertextError
from crypto.keyfile import read_secret, write_secret

POLY_MODULUS = 4096
COEFF_BITS = (60,)
SCALE = 2.0**40
SLOTS = POLY_MODULUS  # values per ciphertext: real and imaginary parts of N/2 slots
HALF = SLOTS // 2
SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, -, size
COMPRESSION_NONE, COMPRESSION_ZSTD = 0, 2
SECRET_HEADER = b"murmur-ckks-secret v2\n"
OLD_SECRET_HEADER = b"murmur-ckks-secret v1\n"
DESCRIPTION = "N = 4096, one 60-bit modulus, scale 2^40"
MAX_VALUE = 2.0**14  # a contribution's values; 32 of them sum below 2^19


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _Loadable(Protocol):
    def load(self, context: seal.SEALContext, path: str) -> None: ...


class _File:
    """One scratch file; closed when its thread ends (its thread-local entry goes)."""

    def __init__(self, directory: str | None) -> None:
        self.pid = os.getpid()
        if directory is None:
            self.fd = os.memfd_create("murmur-ckks", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self.fd}"
        else:  # pragma: no cover - Linux has memfd
            self.path = os.path.join(directory, f"{self.pid}-{threading.get_ident()}")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._closer()


class _Scratch:
    """Per-thread in-memory files through which SEAL objects become bytes and back;
    each is emptied after every use, so no secret key stays in one."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._dir: str | None = None
        self._lock = threading.Lock()

    def _file(self) -> _File:
        found: _File | None = getattr(self._local, "file", None)
        if found is not None and found.pid != os.getpid():  # a forked child: its own file
            found.close()  # the inherited descriptor; the parent's stays open
            found = None
        if found is None:
            directory = None
            if not hasattr(os, "memfd_create"):  # pragma: no cover - Linux has memfd
                with self._lock:
                    if self._dir is None:
                        self._dir = tempfile.mkdtemp(prefix="murmur-ckks-")  # mode 0700
                        weakref.finalize(self, shutil.rmtree, self._dir, True)
                directory = self._dir
            found = _File(directory)
            self._local.file = found
        return found

    def dump(self, obj: _Saveable) -> bytes:
        file = self._file()
        try:
            os.ftruncate(file.fd, 0)
            obj.save(file.path)
            return os.pread(file.fd, os.fstat(file.fd).st_size, 0)
        finally:
            os.ftruncate(file.fd, 0)

    def load(self, data: bytes, obj: _Loadable) -> None:
        """Fill ``obj`` from ``data``; SEAL checks it against Murmur's parameters."""
        file = self._file()
        try:
            os.ftruncate(file.fd, 0)
            os.pwrite(file.fd, data, 0)
            obj.load(_seal().context, file.path)
        finally:
            os.ftruncate(file.fd, 0)


SCRATCH = _Scratch()


def _header(blob: bytes) -> tuple[int, int]:
    """(compression mode, declared size) of a SEAL object, or MalformedCiphertextError."""
    if len(blob) < SEAL_HEADER.size:
        raise MalformedCiphertextError("SEAL object is shorter than its header")
    magic, header, major, _minor, compression, _reserved, size = SEAL_HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or header != SEAL_HEADER.size or major != 4:
        raise MalformedCiphertextError("SEAL object header is wrong")
    return compression, size


def _inflated(blob: bytes, limit: int) -> bytes:
    """``blob`` (as SEAL saved it, zstd-compressed) in SEAL's uncompressed form. Only ever
    given SEAL's own output: received bytes are never inflated, only compared."""
    compression, size = _header(blob)
    if size != len(blob):
        raise MalformedCiphertextError("SEAL object is not the size its header declares")
    if compression == COMPRESSION_NONE:
        return blob
    if compression != COMPRESSION_ZSTD:
        raise MalformedCiphertextError(f"SEAL object uses compression mode {compression}")
    body = zstandard.ZstdDecompressor().decompress(blob[SEAL_HEADER.size :], max_output_size=limit)
    out = bytearray(blob[: SEAL_HEADER.size])
    struct.pack_into("<BxxQ", out, 5, COMPRESSION_NONE, SEAL_HEADER.size + len(body))
    return bytes(out) + body


def _check_blob(blob: bytes, prefix: bytes, length: int, what: str) -> None:
    """A received SEAL object must be exactly ``length`` bytes and begin with ``prefix``:
    everything before its coefficients (both SEAL headers with their compression modes
    and sizes, parms id, NTT flag, size, degree, moduli, scale, correction factor) is
    fixed by Murmur's parameters, so only the coefficients are left for SEAL to check."""
    if len(blob) != length:
        raise MalformedCiphertextError(f"{what} of {len(blob):,} bytes; expected {length:,}")
    if not blob.startswith(prefix):
        raise MalformedCiphertextError(
            f"{what} does not have the headers of {DESCRIPTION}, uncompressed"
        )


@dataclass(frozen=True)
class _Params:
    """The one SEAL context every Murmur site uses, and what is derived from it."""

    context: seal.SEALContext
    encoder: seal.CKKSEncoder
    evaluator: seal.Evaluator
    ciphertext_bytes: int  # one ciphertext in wire form
    public_key_bytes: int
    ciphertext_prefix: bytes  # what precedes the coefficients, the same in every one
    public_key_prefix: bytes


@functools.cache
def _seal() -> _Params:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_MODULUS, list(COEFF_BITS)))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():  # pragma: no cover - fixed parameters
        raise RuntimeError(f"SEAL refuses {DESCRIPTION}: {context.parameters_error_message()}")
    encoder = seal.CKKSEncoder(context)
    # Wire sizes from one real key and ciphertext: SEAL's format fixes them for these
    # parameters, and a receiver wants exactly these lengths.
    keygen = seal.KeyGenerator(context)
    public = seal.PublicKey()
    keygen.create_public_key(public)
    plain = seal.Plaintext()
    encoder.encode(0.0, SCALE, plain)
    zero = seal.Ciphertext()
    seal.Encryptor(context, public).encrypt(plain, zero)
    coefficients = 2 * POLY_MODULUS * 8 * len(COEFF_BITS)  # two polynomials of u64
    cipher_blob = _inflated(SCRATCH.dump(zero), 1 << 20)
    key_blob = _inflated(SCRATCH.dump(public), 1 << 20)
    return _Params(
        context,
        encoder,
        seal.Evaluator(context),
        ciphertext_bytes=len(cipher_blob),
        public_key_bytes=len(key_blob),
        ciphertext_prefix=cipher_blob[: len(cipher_blob) - coefficients],
        public_key_prefix=key_blob[: len(key_blob) - coefficients],
    )


@dataclass
class _PeerKey:
    """A parsed public key and its encryptor (built once per key, reused every round)."""

    key: seal.PublicKey
    encryptor: seal.Encryptor


def _wire(cipher: seal.Ciphertext) -> bytes:
    """A ciphertext as it is sent: SEAL's uncompressed form, in the exact shape a
    receiver checks for (our own output must pass our own check)."""
    p = _seal()
    blob = _inflated(SCRATCH.dump(cipher), p.ciphertext_bytes)
    _check_blob(blob, p.ciphertext_prefix, p.ciphertext_bytes, "our own ciphertext")
    return blob


def _load_public(data: bytes) -> _PeerKey:
    p = _seal()
    try:
        _check_blob(data, p.public_key_prefix, p.public_key_bytes, "a CKKS public key")
    except MalformedCiphertextError as exc:
        raise KeyMismatchError(
            f"{exc}: a published CKKS key holds the public key only, for {DESCRIPTION}"
        ) from None
    key = seal.PublicKey()
    try:
        SCRATCH.load(data, key)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise KeyMismatchError(
            f"CKKS public key has other parameters or bad data (Murmur uses {DESCRIPTION}): {exc}"
        ) from None
    return _PeerKey(key, seal.Encryptor(p.context, key))


class CkksCipher:
    """Per-site CKKS keys; encrypt under a peer's public key, add, decrypt our own sums."""

    name = "ckks"
    params = hashlib.sha256(
        repr(("seal", "real+imaginary halves", POLY_MODULUS, COEFF_BITS, SCALE)).encode()
    ).digest()[:8]
    slots = SLOTS

    def __init__(self) -> None:
        self.max_chunk_bytes = _seal().ciphertext_bytes

    def generate(self) -> SecretKey:
        p = _seal()
        keygen = seal.KeyGenerator(p.context)
        public = seal.PublicKey()
        keygen.create_public_key(public)
        return self._secret(public, keygen.secret_key())

    def _secret(self, public: seal.PublicKey, secret: seal.SecretKey) -> SecretKey:
        data = _inflated(SCRATCH.dump(public), _seal().public_key_bytes)
        peer = _PeerKey(public, seal.Encryptor(_seal().context, public))
        return SecretKey(PublicKey(data, key_id_of(data), handle=peer), handle=secret)

    def public_key(self, data: bytes) -> PublicKey:
        return PublicKey(data, key_id_of(data), handle=_load_public(data))

    def encrypt(self, values: NDArray[np.float64], key: PublicKey) -> Sealed:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(flat).all() or np.abs(flat).max(initial=0.0) > MAX_VALUE:
            raise ValueError(
                f"CKKS carries finite values of magnitude ≤ {MAX_VALUE:g} only (sums of up "
                "to 32 then stay inside the modulus); this contribution has others: has "
                "the model diverged?"
            )
        peer = key.handle if isinstance(key.handle, _PeerKey) else _load_public(key.data)
        p = _seal()
        chunks = []
        for start in range(0, len(flat), SLOTS):
            chunk = np.zeros(SLOTS)
            part = flat[start : start + SLOTS]
            chunk[: len(part)] = part
            plain = seal.Plaintext()
            p.encoder.encode((chunk[:HALF] + 1j * chunk[HALF:]).tolist(), SCALE, plain)
            cipher = seal.Ciphertext()
            peer.encryptor.encrypt(plain, cipher)
            chunks.append(_wire(cipher))
        return Sealed(self.name, self.params, key.key_id, len(flat), tuple(chunks))

    def _load(self, sealed: Sealed) -> list[seal.Ciphertext]:
        p = _seal()
        first = p.context.first_parms_id()
        out = []
        if len(sealed.chunks) != -(-sealed.count // SLOTS):
            raise MalformedCiphertextError(f"ciphertext does not hold {sealed.count} values")
        for chunk in sealed.chunks:
            _check_blob(chunk, p.ciphertext_prefix, p.ciphertext_bytes, "a ciphertext chunk")
            cipher = seal.Ciphertext()
            try:
                SCRATCH.load(chunk, cipher)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise MalformedCiphertextError(f"ciphertext rejected by SEAL: {exc}") from None
            if cipher.size() != 2 or not cipher.is_ntt_form() or cipher.parms_id() != first:
                raise MalformedCiphertextError("ciphertext is not a fresh-level CKKS ciphertext")
            if cipher.scale != SCALE:
                raise MalformedCiphertextError("ciphertext scale is not 2^40")
            out.append(cipher)
        return out

    def add(self, parts: Sequence[Sealed], key: PublicKey) -> Sealed:
        check_parts(parts, key)
        p = _seal()
        total = self._load(parts[0])
        for part in parts[1:]:
            for acc, cipher in zip(total, self._load(part), strict=True):
                try:
                    p.evaluator.add_inplace(acc, cipher)
                except (ValueError, RuntimeError) as exc:
                    raise MalformedCiphertextError(f"ciphertexts cannot be added: {exc}") from None
        chunks = tuple(_wire(c) for c in total)
        return Sealed(self.name, self.params, key.key_id, parts[0].count, chunks)

    def decrypt(self, sealed: Sealed, secret: SecretKey) -> NDArray[np.float64]:
        if sealed.key_id != secret.public.key_id:
            raise KeyMismatchError("ciphertext is under another site's key")
        if not isinstance(secret.handle, seal.SecretKey):
            raise KeyMismatchError("this key holds no secret key: it cannot decrypt")
        p = _seal()
        decryptor = seal.Decryptor(p.context, secret.handle)
        out = []
        for cipher in self._load(sealed):
            plain = seal.Plaintext()
            decryptor.decrypt(cipher, plain)
            slots = np.asarray(p.encoder.decode_complex(plain), dtype=np.complex128)
            out.append(np.concatenate([slots.real, slots.imag]))
        return np.concatenate(out)[: sealed.count] if out else np.zeros(0)

    def save(self, secret: SecretKey, path: Path, overwrite: bool = False) -> None:
        """The key file, mode 0600: the published public key, then SEAL's secret key."""
        if not isinstance(secret.handle, seal.SecretKey):
            raise KeyMismatchError("this key holds no secret key: there is nothing to save")
        public = secret.public.data
        body = SCRATCH.dump(secret.handle)
        data = SECRET_HEADER + struct.pack("<I", len(public)) + public + body
        write_secret(path, data, overwrite, what="CKKS secret key")

    def load(self, path: Path) -> SecretKey:
        data = read_secret(path)
        if data.startswith(OLD_SECRET_HEADER):
            raise KeyFileError(
                f"{path} holds a CKKS key of an earlier Murmur (N = 8192): every site of the "
                "consortium makes a new key (murmur keys rotate) and unpins its neighbours' "
                "old ones (murmur keys unpin --peer ID)"
            )
        if not data.startswith(SECRET_HEADER) or len(data) < len(SECRET_HEADER) + 4:
            raise KeyFileError(f"{path} is not a Murmur CKKS secret key")
        pos = len(SECRET_HEADER)
        (length,) = struct.unpack_from("<I", data, pos)
        public_data, body = data[pos + 4 : pos + 4 + length], data[pos + 4 + length :]
        try:
            public = _load_public(public_data)
        except KeyMismatchError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        secret = seal.SecretKey()
        try:
            SCRATCH.load(body, secret)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise KeyFileError(f"{path}: unreadable CKKS secret key: {exc}") from None
        key = SecretKey(PublicKey(public_data, key_id_of(public_data), handle=public), secret)
        probe = np.linspace(-1.0, 1.0, 8)
        if not np.abs(self.decrypt(self.encrypt(probe, key.public), key) - probe).max() <= 1e-4:
            raise KeyFileError(f"{path}: its secret key does not belong to its public key")
        return key

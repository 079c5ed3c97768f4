"""One conformance suite for both ciphers: the real CKKS one and the plaintext stand-in."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.cipher import Cipher, PlaintextCipher, Sealed, SecretKey, open_envelope
from crypto.ckks import CkksCipher
from crypto.errors import KeyFileError, KeyMismatchError, MalformedCiphertextError

CIPHERS: list[Cipher] = [PlaintextCipher(), CkksCipher()]
KEYS: dict[str, tuple[SecretKey, SecretKey]] = {}


def _keys(cipher: Cipher) -> tuple[SecretKey, SecretKey]:
    if cipher.name not in KEYS:  # key generation is the slow part; two sites per cipher
        KEYS[cipher.name] = (cipher.generate(), cipher.generate())
    return KEYS[cipher.name]


@pytest.fixture(params=CIPHERS, ids=lambda c: c.name)
def cipher(request: pytest.FixtureRequest) -> Cipher:
    c: Cipher = request.param
    return c


def test_sum_of_ciphertexts_decrypts_to_the_sum(cipher: Cipher) -> None:
    receiver, _ = _keys(cipher)
    key = cipher.public_key(receiver.public.data)  # as pinned from the published bytes
    rng = np.random.default_rng(0)
    parts = [rng.uniform(-1, 1, 5000) for _ in range(3)]
    sealed = [cipher.encrypt(p, key) for p in parts]
    wired = [open_envelope(s.to_bytes(), cipher, key, 5000) for s in sealed]
    total = cipher.decrypt(cipher.add(wired, key), receiver)
    error = float(np.abs(total - sum(parts)).max())
    assert error <= 1e-6, error


def test_only_the_receivers_secret_key_decrypts(cipher: Cipher) -> None:
    receiver, other = _keys(cipher)
    sealed = cipher.encrypt(np.ones(10), receiver.public)
    with pytest.raises(KeyMismatchError):
        cipher.decrypt(sealed, other)
    # The aggregator holds the receiver's public key only.
    aggregator_view = SecretKey(receiver.public, handle=receiver.public.handle)
    if cipher.name == "ckks":
        with pytest.raises(KeyMismatchError, match="cannot decrypt"):
            cipher.decrypt(sealed, aggregator_view)


def test_wrong_key_oversized_and_malformed_bytes_are_rejected(cipher: Cipher) -> None:
    receiver, other = _keys(cipher)
    good = cipher.encrypt(np.ones(100), receiver.public).to_bytes()
    with pytest.raises(KeyMismatchError):
        open_envelope(good, cipher, other.public, 100)
    with pytest.raises(MalformedCiphertextError, match="exceeds"):
        open_envelope(good + bytes(cipher.max_chunk_bytes), cipher, receiver.public, 100)
    with pytest.raises(MalformedCiphertextError, match="100 values"):
        open_envelope(
            cipher.encrypt(np.ones(99), receiver.public).to_bytes(), cipher, receiver.public, 100
        )
    for bad in (b"", b"\xc1", good[: len(good) // 2], os.urandom(300)):
        with pytest.raises(MalformedCiphertextError):
            open_envelope(bad, cipher, receiver.public, 100)
    with pytest.raises(KeyMismatchError):
        cipher.add(
            [cipher.encrypt(np.ones(3), receiver.public), cipher.encrypt(np.ones(3), other.public)],
            receiver.public,
        )


def test_published_keys_are_checked(cipher: Cipher) -> None:
    with pytest.raises(KeyMismatchError):
        cipher.public_key(b"\x00" * 7)


def _ckks_chunk_mutation(data: st.DataObject, sealed: Sealed) -> bytes:
    chunk = bytearray(sealed.chunks[0])
    region = data.draw(st.sampled_from(["head", "tail"]))
    pos = (
        data.draw(st.integers(0, 40))
        if region == "head"
        else len(chunk) - 1 - data.draw(st.integers(0, 12))
    )
    chunk[pos] ^= data.draw(st.integers(1, 255))
    return bytes(chunk)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_ckks_framing_is_rejected_or_harmless(data: st.DataObject) -> None:
    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    sealed = cipher.encrypt(np.full(10, 0.5), receiver.public)
    mutated = Sealed(
        sealed.cipher, sealed.params, sealed.key_id, 10, (_ckks_chunk_mutation(data, sealed),)
    )
    with contextlib.suppress(MalformedCiphertextError):  # a clear error, or harmless values
        cipher.decrypt(mutated, receiver)


def test_secret_key_file_is_private(cipher: Cipher, tmp_path: Path) -> None:
    secret, _ = _keys(cipher)
    path = tmp_path / "encryption.key"
    cipher.save(secret, path)
    assert path.stat().st_mode & 0o777 == 0o600
    if cipher.name == "ckks":  # the secret passed through this thread's scratch file
        from crypto.ckks import SCRATCH

        assert os.fstat(SCRATCH._file().fd).st_size == 0
    loaded = cipher.load(path)
    assert loaded.public.key_id == secret.public.key_id
    assert cipher.decrypt(cipher.encrypt(np.ones(4), secret.public), loaded) == pytest.approx(1.0)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        cipher.save(secret, path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        cipher.load(path)
    if cipher.name == "ckks":
        with pytest.raises(KeyMismatchError, match="public key only"):
            cipher.public_key(path.read_bytes()[len(b"murmur-ckks-secret v2\n") :])


def test_a_ckks_key_file_of_the_earlier_parameters_is_named(tmp_path: Path) -> None:
    """Keys made under N = 8192 cannot read sums under the present parameters: the site is
    told to make new ones, not shown a parse error."""
    path = tmp_path / "encryption.key"
    path.write_bytes(b"murmur-ckks-secret v1\n" + os.urandom(64))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"earlier Murmur.*murmur keys rotate"):
        CkksCipher().load(path)


def test_compressed_ckks_chunks_are_refused_before_seal_reads_them() -> None:
    """SEAL inflates a zstd-compressed object before checking it: a small chunk could
    become gigabytes. Murmur sends chunks uncompressed and refuses any other."""
    import tenseal.sealapi as seal

    from crypto.ckks import SCRATCH, _seal

    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    sealed = cipher.encrypt(np.full(10, 0.5), receiver.public)
    chunk = sealed.chunks[0]
    assert len(chunk) == cipher.max_chunk_bytes and chunk[5] == 0  # compression: none
    # SEAL's own zstd output of a valid ciphertext, as a peer could send it.
    loaded = seal.Ciphertext()
    SCRATCH.load(chunk, loaded)
    compressed = SCRATCH.dump(loaded)
    assert compressed[5] == 2
    # and a chunk of the right length whose header claims zstd
    relabelled = chunk[:5] + b"\x02" + chunk[6:]
    for bad in (compressed, relabelled):
        forged = Sealed(sealed.cipher, sealed.params, sealed.key_id, 10, (bad,))
        with pytest.raises(MalformedCiphertextError, match=r"compressed|bytes; expected"):
            cipher.decrypt(forged, receiver)
    assert _seal().ciphertext_bytes == cipher.max_chunk_bytes


def test_a_forked_child_encrypts_through_its_own_scratch_file() -> None:
    """SEAL objects pass through an in-memory file; a child forked after the parent used
    it must not write into the same one while the parent does."""
    import multiprocessing

    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    cipher.encrypt(np.ones(4), receiver.public)  # the parent's scratch file exists
    context = multiprocessing.get_context("fork")
    values = [float(v) for v in range(1, 9)]
    with context.Pool(2) as pool:
        sums = pool.map(_encrypted_in_a_child, values, chunksize=1)
    for value, data in zip(values, sums, strict=True):
        sealed = open_envelope(data, cipher, receiver.public, 4096 * 16)
        assert np.abs(cipher.decrypt(sealed, receiver) - value).max() < 1e-5


def _encrypted_in_a_child(value: float) -> bytes:
    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    return cipher.encrypt(np.full(4096 * 16, value), receiver.public).to_bytes()


def test_every_header_byte_of_a_received_chunk_or_key_is_checked() -> None:
    """Everything before the coefficients is fixed by the parameters: a change to any of
    it (the inner array header's compression mode included) is refused before SEAL
    reads the bytes, so no compressed data and no second byte form of a key gets in."""
    from crypto.ckks import _seal

    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    sealed = cipher.encrypt(np.full(10, 0.5), receiver.public)
    chunk = sealed.chunks[0]
    prefix = len(_seal().ciphertext_prefix)
    assert prefix == len(chunk) - 2 * 4096 * 8  # two polynomials of 4,096 u64 follow
    for pos in range(prefix):
        bad = bytearray(chunk)
        bad[pos] ^= 0x01
        forged = Sealed(sealed.cipher, sealed.params, sealed.key_id, 10, (bytes(bad),))
        with pytest.raises(MalformedCiphertextError, match="headers"):
            cipher.decrypt(forged, receiver)
    key = receiver.public.data
    for pos in range(len(_seal().public_key_prefix)):
        bad = bytearray(key)
        bad[pos] ^= 0x01
        with pytest.raises(KeyMismatchError):
            cipher.public_key(bytes(bad))
    with pytest.raises(MalformedCiphertextError, match="does not hold 10 values"):
        cipher.decrypt(Sealed(sealed.cipher, sealed.params, sealed.key_id, 10, ()), receiver)


def test_ckks_refuses_to_encrypt_what_its_sums_could_not_carry() -> None:
    cipher = CkksCipher()
    receiver, _ = _keys(cipher)
    for bad in (np.array([1.0, np.nan]), np.array([np.inf]), np.array([0.0, 3e4])):
        with pytest.raises(ValueError, match="finite values of magnitude"):
            cipher.encrypt(bad, receiver.public)


def test_scratch_files_are_emptied_after_use_and_closed_with_their_thread() -> None:
    """A thread's scratch file holds nothing between calls (a saved secret key is not
    left in it) and is closed when the thread ends: short-lived worker threads would
    otherwise leak a descriptor each."""
    import gc
    import threading

    from crypto.ckks import SCRATCH

    cipher = CkksCipher()
    receiver, _ = _keys(cipher)

    def work() -> None:
        cipher.encrypt(np.ones(8), receiver.public)

    work()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    file = SCRATCH._file()
    assert os.fstat(file.fd).st_size == 0

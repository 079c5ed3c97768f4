"""Site keys: peer IDs, 0600 key files, signatures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crypto.errors import BadSignatureError, KeyFileError
from crypto.identity import (
    SiteIdentity,
    load_key,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify,
    write_key,
)


def test_key_file_round_trip_is_0600(tmp_path: Path) -> None:
    identity = SiteIdentity.generate()
    path = tmp_path / "site.key"
    write_key(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).peer_id == identity.peer_id
    assert identity.peer_id.startswith("12D3KooW")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key(path, SiteIdentity.generate())


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    write_key(path, SiteIdentity.generate())
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)


@pytest.mark.parametrize("text", ["", "hello\n", "murmur-site-key ed25519 v1\nzz\n"])
def test_malformed_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "site.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_key(path)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="murmur keygen"):
        load_key(tmp_path / "nope.key")


def test_peer_id_carries_the_public_key() -> None:
    identity = SiteIdentity.generate()
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key
    assert peer_id_from_public_key(identity.public_key) == identity.peer_id
    with pytest.raises(BadSignatureError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # sha256 ID
    with pytest.raises(BadSignatureError):
        public_key_from_peer_id("not base58 0OIl")


def test_signatures_verify_and_tampering_fails() -> None:
    identity = SiteIdentity.generate()
    signature = identity.sign(b"message")
    verify(identity.public_key, b"message", signature)
    with pytest.raises(BadSignatureError):
        verify(identity.public_key, b"messagf", signature)
    with pytest.raises(BadSignatureError):
        verify(SiteIdentity.generate().public_key, b"message", signature)

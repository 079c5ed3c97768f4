"""Exception tree of the crypto package.

CryptoError (a murmur.errors.MurmurError)
├── MalformedCiphertextError  bytes that are not a well-formed ciphertext of our parameters
├── KeyMismatchError          a missing, unreadable or mismatched key
│   └── KeyFileError          a key file that is missing, malformed or readable by others
├── BadSignatureError         a signature that does not verify, or a peer ID we cannot use
└── UnknownCipherError        a cipher name that is not registered
"""

from murmur.errors import MurmurError


class CryptoError(MurmurError):
    """Base class for every error raised by the crypto package."""


class MalformedCiphertextError(CryptoError):
    """Received ciphertext bytes were rejected before or while parsing them."""


class KeyMismatchError(CryptoError):
    """A key is missing, unreadable, has unsafe permissions or does not match its peer."""


class KeyFileError(KeyMismatchError):
    """A site key file cannot be used: missing, malformed, or group/other-readable."""


class BadSignatureError(CryptoError):
    """A signature failed to verify, or a peer ID does not carry an Ed25519 key."""


class UnknownCipherError(CryptoError, ValueError):
    """No cipher is registered under that name."""

"""Exception tree of the crypto package.

CryptoError
├── MalformedCiphertextError  bytes that are not a well-formed ciphertext of our parameters
├── KeyMismatchError          a missing, unreadable or mismatched key
│   └── KeyFileError          a key file that is missing, malformed or readable by others
└── BadSignatureError         a signature that does not verify, or a peer ID we cannot use
"""


class CryptoError(Exception):
    """Base class for every error raised by the crypto package."""


class MalformedCiphertextError(CryptoError):
    """Received ciphertext bytes were rejected before or while parsing them."""


class KeyMismatchError(CryptoError):
    """A key is missing, unreadable, has unsafe permissions or does not match its peer."""


class KeyFileError(KeyMismatchError):
    """A site key file cannot be used: missing, malformed, or group/other-readable."""


class BadSignatureError(CryptoError):
    """A signature failed to verify, or a peer ID does not carry an Ed25519 key."""

"""Exception tree of the crypto package.

CryptoError
├── MalformedCiphertextError  bytes that are not a well-formed ciphertext of our parameters
└── KeyMismatchError          a missing, unreadable or mismatched key
"""


class CryptoError(Exception):
    """Base class for every error raised by the crypto package."""


class MalformedCiphertextError(CryptoError):
    """Received ciphertext bytes were rejected before or while parsing them."""


class KeyMismatchError(CryptoError):
    """A key is missing, unreadable, has unsafe permissions or does not match its peer."""

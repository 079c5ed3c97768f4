"""Exception tree of the node package.

NodeError (a murmur.errors.MurmurError)
├── ConfigError            bad user input: unknown names, values out of range
│   ├── UnknownCompressorError
│   └── IncompatibleModelError  a model the protocol cannot use (e.g. BatchNorm)
├── NodeCrashedError       an internal task failed; the node stopped at a checkpoint
├── ProtocolError          a peer or frame that breaks the gossip protocol
│   └── FrameError         a received frame was rejected; ``reason`` names the counter
│       ├── MalformedFrameError   not a well-formed frame (truncated, bad msgpack, bad field)
│       ├── OversizedFrameError   over the size limit (checked before reading the body)
│       ├── UnknownSenderError    sender not in the consortium allowlist
│       ├── ForgedFrameError      bad signature, or sender ≠ the authenticated connection
│       ├── ReplayedFrameError    a nonce this node has already accepted
│       ├── StaleFrameError       a round older than the replay window, or already closed
│       ├── FutureFrameError      a round further ahead of ours than the admitted lead
│       ├── KeyPinError           a neighbour's encryption key differs from the pinned one
│       └── SealedRejectedError   a ciphertext or contributor record failed its checks
└── TransportError         sending failed; the frame was not delivered
    ├── UnknownPeerError       no address for that peer (not in the address book)
    ├── PeerUnreachableError   could not connect or write within the timeout
    └── TransportClosedError   the transport was closed
ConfigError derives from ValueError so that input validation can be caught generically.
"""

from murmur.errors import MurmurError


class NodeError(MurmurError):
    """Base class for every error raised by the node package."""


class ConfigError(NodeError, ValueError):
    """Invalid configuration or command-line input; the message names the problem."""


class UnknownCompressorError(ConfigError):
    """The compressor specification is not one of the accepted forms."""


class IncompatibleModelError(ConfigError):
    """The model cannot be used for gossip learning as configured."""


class NodeCrashedError(NodeError):
    """An internal task of the node failed unexpectedly; it stopped at a round boundary."""


class ProtocolError(NodeError):
    """A message or peer violated the gossip protocol."""


class FrameError(ProtocolError):
    """A received frame was rejected; the node counts it under ``reason`` and goes on."""

    reason = "frame"


class MalformedFrameError(FrameError):
    reason = "malformed"


class OversizedFrameError(FrameError):
    reason = "oversized"


class UnknownSenderError(FrameError):
    reason = "unknown_sender"


class ForgedFrameError(FrameError):
    reason = "forged"


class ReplayedFrameError(FrameError):
    reason = "replayed"


class StaleFrameError(FrameError):
    reason = "stale"


class EarlyStopError(FrameError):
    """A neighbour announced a training stop before any site can make one (the first
    reading needs two windows and the patience after it: node.gossip.validation_stop)."""

    reason = "early_stop"


class FutureFrameError(FrameError):
    """A signed frame for a round too far ahead of ours: its contents are not used, but
    its round is a (member-signed) claim of where the sender is, for catching up."""

    reason = "future"

    def __init__(self, message: str, round: int) -> None:
        super().__init__(message)
        self.round = round


class KeyPinError(FrameError):
    """A neighbour presented an encryption key other than the one pinned for its peer ID."""

    reason = "key_mismatch"


class SealedRejectedError(FrameError):
    """A secure-aggregation frame whose ciphertext or contributor record is not acceptable."""

    reason = "sealed_rejected"


class TransportError(NodeError):
    """A frame could not be sent; nothing was delivered."""


class UnknownPeerError(TransportError):
    """The peer is not in this node's address book."""


class PeerUnreachableError(TransportError):
    """No connection to the peer could be made, or the write timed out."""


class TransportClosedError(TransportError):
    """The transport was closed; no more frames go in or out."""

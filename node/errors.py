"""Exception tree of the node package.

NodeError
├── ConfigError            bad user input: unknown names, values out of range
│   ├── UnknownCompressorError
│   └── IncompatibleModelError  a model the protocol cannot use (e.g. BatchNorm)
└── ProtocolError          a peer or frame that breaks the gossip protocol
ConfigError derives from ValueError so that input validation can be caught generically.
"""


class NodeError(Exception):
    """Base class for every error raised by the node package."""


class ConfigError(NodeError, ValueError):
    """Invalid configuration or command-line input; the message names the problem."""


class UnknownCompressorError(ConfigError):
    """The compressor specification is not one of the accepted forms."""


class IncompatibleModelError(ConfigError):
    """The model cannot be used for gossip learning as configured."""


class ProtocolError(NodeError):
    """A message or peer violated the gossip protocol."""

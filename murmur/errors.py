"""The root of every error Murmur raises on purpose.

MurmurError
├── crypto.errors.CryptoError       keys, signatures, ciphertexts
├── topology.errors.TopologyError   graphs and their weights
├── node.errors.NodeError           config, protocol, transport, a crashed node
└── sim.errors.SimError             datasets, partitions, simulator input

A caller (the ``murmur`` command, a hospital's own script) catches ``MurmurError`` to tell
a problem Murmur explains from a bug; each package documents its own tree in its
``errors.py``. Errors from a dependency (TenSEAL, libp2p, Opacus, nibabel) are translated
into one of these where the project calls it, so they never reach a caller raw.
"""


class MurmurError(Exception):
    """Base class for every error Murmur raises; the message names the problem."""

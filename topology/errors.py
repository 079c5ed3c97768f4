"""Exception tree of the topology package.

TopologyError (a murmur.errors.MurmurError)
├── UnknownTopologyError   a name that is not a known graph family
├── DisconnectedGraphError a graph on which gossip cannot reach consensus
└── EdgeListError          an edge-list file that cannot be read
All derive from ValueError so callers that validate input can catch them generically.
"""

from murmur.errors import MurmurError


class TopologyError(MurmurError, ValueError):
    """Base class for every error raised by the topology package."""


class UnknownTopologyError(TopologyError):
    """The topology specification names no known graph family or has bad parameters."""


class DisconnectedGraphError(TopologyError):
    """The graph has more than one connected component: gossip could never mix them."""


class EdgeListError(TopologyError):
    """An edge-list file is missing, unreadable or does not describe nodes 0..N-1."""

"""Communication graphs for gossip learning: builders, mixing weights, schedules.

A leaf package: it imports nothing else of Murmur but the shared error root and
registry (:mod:`murmur`), so both the node runtime and the
simulators can share one definition of "who talks to whom, with what weight".
"""

from topology.errors import DisconnectedGraphError, TopologyError, UnknownTopologyError
from topology.graphs import TOPOLOGIES, TOPOLOGY_NAMES, build_graph, register_topology
from topology.schedule import MatchingSchedule, StaticTopology, Topology, build_topology
from topology.weights import metropolis_hastings, spectral_gap

__all__ = [
    "TOPOLOGIES",
    "TOPOLOGY_NAMES",
    "DisconnectedGraphError",
    "MatchingSchedule",
    "StaticTopology",
    "Topology",
    "TopologyError",
    "UnknownTopologyError",
    "build_graph",
    "build_topology",
    "metropolis_hastings",
    "register_topology",
    "spectral_gap",
]

"""A site's configuration: ``site.toml`` as per-section frozen dataclasses.

:mod:`node.config.sections` holds the sections and their defaults (the only defaults),
:mod:`node.config.schema` reads and writes any section from its fields, and
:mod:`node.config.loader` reads a whole file, resolves paths and writes one back.
"""

from node.config.loader import SECTIONS, NodeConfig, load_config
from node.config.sections import (
    DEFAULT_COMPRESSOR,
    GOSSIP_METHODS,
    METRICS_DEFAULT,
    METRICS_OFF,
    SECURE_MODES,
    SPLITS,
    ConsortiumSection,
    DataSection,
    FaultsSection,
    GossipSection,
    Partition,
    SiteSection,
    TelemetrySection,
    TrainSection,
    consortium_topology,
    parse_broker,
    parse_metrics_address,
    parse_partition,
)

__all__ = [
    "DEFAULT_COMPRESSOR",
    "GOSSIP_METHODS",
    "METRICS_DEFAULT",
    "METRICS_OFF",
    "SECTIONS",
    "SECURE_MODES",
    "SPLITS",
    "ConsortiumSection",
    "DataSection",
    "FaultsSection",
    "GossipSection",
    "NodeConfig",
    "Partition",
    "SiteSection",
    "TelemetrySection",
    "TrainSection",
    "consortium_topology",
    "load_config",
    "parse_broker",
    "parse_metrics_address",
    "parse_partition",
]

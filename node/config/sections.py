"""The sections of a site's ``site.toml``, one frozen dataclass each.

Each section checks its own values and lists every problem at once; checks that need two
sections (the secure mode's compressor, the privacy weighting's consortium mean, files
next to the config) are in :mod:`node.config.loader`. Defaults live on these fields and
nowhere else: ``murmur sim`` reads its flag defaults from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import networkx as nx

from crypto.errors import BadSignatureError
from crypto.identity import public_key_from_peer_id
from node.config.schema import AUTO, DEFAULTS, DOC, FLATTEN, KEY
from node.errors import ConfigError
from node.gossip.compress import require_shared_slots
from node.gossip.registry import parse_compressor
from node.training.data import BUILTIN_DATASETS
from node.training.trainer import TrainConfig
from topology import StaticTopology, Topology, TopologyError, build_topology

SPLITS = ("auto", "iid", "dirichlet", "natural")
SECURE_MODES = ("off", "ckks", "plain")
GOSSIP_METHODS = ("murmur", "murmur-gt")
DEFAULT_COMPRESSOR = "top-k:0.1"


def _raise_all(problems: list[tuple[bool, str]]) -> None:
    messages = [message for bad, message in problems if bad]
    if messages:
        raise ConfigError("; ".join(messages))


@dataclass(frozen=True)
class SiteSection:
    key: Path = field(metadata={DOC: "this site's identity, from `murmur keygen` (mode 0600)"})
    listen: str = field(default="/ip4/127.0.0.1/tcp/0", metadata={DOC: "libp2p multiaddr"})
    state_dir: Path = field(default=Path("state"), metadata={DOC: "checkpoint, logs, keys"})

    def __post_init__(self) -> None:
        _raise_all([(not self.listen.startswith("/"), f"listen {self.listen!r}: not a multiaddr")])


def consortium_topology(
    members: tuple[str, ...], topology: str, edges: tuple[tuple[str, str], ...], seed: int
) -> Topology:
    """The consortium graph over member indices: explicit ``edges`` or a named topology."""
    if not edges:
        return build_topology(topology, len(members), seed)
    index = {m: i for i, m in enumerate(members)}
    graph: nx.Graph[int] = nx.Graph()
    graph.add_nodes_from(range(len(members)))
    for a, b in edges:
        if a not in index or b not in index:
            raise TopologyError(f"edge {a} – {b} names a peer that is not in members")
        if a == b:
            raise TopologyError(f"edge {a} – {b} is a self-loop")
        graph.add_edge(index[a], index[b])
    if not nx.is_connected(graph):
        raise TopologyError(
            f"edges leave the consortium in {nx.number_connected_components(graph)} parts; "
            "gossip needs a connected graph"
        )
    return StaticTopology(graph)


@dataclass(frozen=True)
class ConsortiumSection:
    seed: int = field(default=0, metadata={DOC: "public: initial model and round seeds"})
    members: tuple[str, ...] = field(
        default=(), metadata={DOC: "every site's peer ID, same order everywhere (graph order)"}
    )
    topology: str = field(default="ring", metadata={DOC: "any murmur topology over members"})
    edges: tuple[tuple[str, str], ...] = field(
        default=(), metadata={DOC: "or the graph itself; every site lists the same edges"}
    )
    peers: dict[str, str] = field(
        default_factory=dict, metadata={DOC: "multiaddrs of the other members"}
    )

    def __post_init__(self) -> None:
        problems = []
        for member in self.members:
            try:
                public_key_from_peer_id(member)
            except BadSignatureError as exc:
                problems.append((True, f"members: {exc}"))
        problems.append((len(set(self.members)) != len(self.members), "members has duplicates"))
        for peer, addr in self.peers.items():
            problems.append((peer not in self.members, f"peers: {peer} is not in members"))
            problems.append((not addr.startswith("/"), f"bad multiaddr for {peer}"))
        if len(self.members) >= 2:
            try:
                consortium_topology(self.members, self.topology, self.edges, self.seed)
            except (TopologyError, ValueError) as exc:
                problems.append((True, f"{'edges' if self.edges else 'topology'}: {exc}"))
        _raise_all(problems)


@dataclass(frozen=True)
class DataSection:
    source: str = field(
        metadata={
            DOC: "csv:PATH, npz:PATH (x, y), brats:DIR (BraTS case folders), custom:NAME "
            "(your own loop) or builtin:NAME"
        }
    )
    target: str | None = field(default=None, metadata={DOC: "the label column (csv)"})
    eval_source: str | None = field(
        default=None, metadata={KEY: "eval", DOC: "held-out rows to score on, as source"}
    )
    features: Path | None = field(
        default=None,
        metadata={
            DOC: "csv: the consortium's feature statistics and categories (murmur data "
            "features); default: this site's own, numeric columns only"
        },
    )
    join_features: bool = field(
        default=False,
        metadata={
            DOC: "csv: compute the consortium's feature statistics at join, by a masked "
            "sum with every member (node.join_features)"
        },
    )
    split: str = field(default="auto", metadata={DOC: "builtin: iid | dirichlet | natural"})
    alpha: float | None = field(default=None, metadata={DOC: "builtin: Dirichlet label skew"})

    def __post_init__(self) -> None:
        kind, _, rest = self.source.partition(":")
        builtin = kind == "builtin" and rest in BUILTIN_DATASETS
        _raise_all(
            [
                (
                    not ((kind in ("csv", "npz", "brats", "custom") and bool(rest)) or builtin),
                    f"source {self.source!r}: expected csv:PATH, npz:PATH, brats:DIR (one "
                    f"folder per BraTS case), custom:NAME (your "
                    f"own training loop, node.training.custom) or builtin:NAME with NAME one "
                    f"of {', '.join(BUILTIN_DATASETS)}",
                ),
                (
                    kind == "csv" and not self.target,
                    "target (the label column) is required for csv",
                ),
                (
                    self.split not in SPLITS,
                    f"split must be one of {', '.join(SPLITS)}, got {self.split!r}",
                ),
                (self.alpha is not None and not self.alpha > 0, "alpha must be positive"),
                (
                    self.join_features and (kind != "csv" or self.features is not None),
                    "join_features computes the statistics of csv: data, and replaces features",
                ),
            ]
        )


def _train_defaults(table: dict[str, object]) -> TrainConfig:
    """What ``[train]`` keys left out mean: a segmentation model's defaults (Adam, its
    batch of patches, no validation stop) for ``unet…`` models, else TrainConfig's."""
    from node.training.models import SEGMENTATION_MODELS
    from node.training.segmentation import train_defaults

    model = table.get("model")
    if isinstance(model, str) and model.partition(":")[0] in SEGMENTATION_MODELS:
        return train_defaults(model)
    return TrainConfig()


@dataclass(frozen=True)
class TrainSection:
    model: str = field(default="mlp:32", metadata={DOC: "logistic or mlp:H1,H2,…"})
    rounds: int = field(default=100, metadata={DOC: "planned rounds"})
    eval_every: int = field(default=1, metadata={DOC: "score the held-out rows every N rounds"})
    trainer: TrainConfig = field(
        default_factory=TrainConfig, metadata={FLATTEN: True, DEFAULTS: _train_defaults}
    )
    patch: str | None = field(
        default=None,
        metadata={AUTO: "auto", DOC: "segmentation patch: auto (the model's), N or X,Y,Z voxels"},
    )

    def __post_init__(self) -> None:
        _raise_all(
            [
                (self.rounds < 1, "rounds must be positive"),
                (self.eval_every < 1, "eval_every must be positive"),
            ]
        )
        if self.patch is not None:
            from node.training.models import SEGMENTATION_MODELS
            from node.training.segmentation import parse_patch

            if self.model.partition(":")[0] not in SEGMENTATION_MODELS:
                raise ConfigError(f"patch is for segmentation models, not {self.model!r}")
            parse_patch(self.patch, self.model)


@dataclass(frozen=True)
class GossipSection:
    compressor: str = field(
        default=DEFAULT_COMPRESSOR,
        metadata={DOC: "identity, top-k:F, rand-k:F, block-k:F[:B], top-k:adaptive, …+q8"},
    )
    method: str = field(default="murmur", metadata={DOC: "murmur or murmur-gt"})
    gamma: float | None = field(
        default=None, metadata={AUTO: "auto", DOC: "consensus step: auto or in (0, 1]"}
    )
    deadline_s: float = field(default=5.0, metadata={DOC: "seconds a round waits"})
    max_frame_bytes: int = field(default=16 * 2**20, metadata={DOC: "largest frame accepted"})
    secure: str = field(
        default="off", metadata={DOC: "off | ckks | plain (secure aggregation: block-k, rand-k)"}
    )

    def __post_init__(self) -> None:
        problems = []
        try:
            parsed = parse_compressor(self.compressor)
            if self.secure in SECURE_MODES[1:]:
                require_shared_slots(parsed, self.secure)
        except ValueError as exc:
            problems.append((True, str(exc) if self.secure != "off" else f"compressor: {exc}"))
        problems += [
            (
                self.secure not in SECURE_MODES,
                f"secure must be one of {', '.join(SECURE_MODES)}, got {self.secure!r}",
            ),
            (
                self.method not in GOSSIP_METHODS,
                f"method must be one of {', '.join(GOSSIP_METHODS)}, got {self.method!r}",
            ),
            (
                self.gamma is not None and not 0 < self.gamma <= 1,
                f"gamma must be 'auto' or in (0, 1], got {self.gamma!r}",
            ),
            (not self.deadline_s > 0, "deadline_s must be positive"),
            (self.max_frame_bytes < 1024, "max_frame_bytes must be at least 1024"),
        ]
        _raise_all(problems)


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS) → (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"[telemetry] mqtt {url!r}: expected mqtt://HOST[:PORT] or mqtts://…")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"[telemetry] mqtt {url!r}: bad port") from None
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


METRICS_OFF = "off"
METRICS_DEFAULT = "127.0.0.1:9464"  # loopback: a site opens it to its scraper on purpose


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); port 0 picks a free one."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"[telemetry] metrics {text!r}: expected HOST:PORT, or {METRICS_OFF!r} to turn it off"
        )
    return host, int(port_text)


@dataclass(frozen=True)
class TelemetrySection:
    mqtt: str | None = field(default=None, metadata={DOC: "mqtt://HOST[:PORT] or mqtts://…"})
    topic: str = field(default="murmur", metadata={DOC: "topic prefix"})
    username: str | None = None
    password_file: Path | None = field(default=None, metadata={DOC: "a 0600 file"})
    ca_file: Path | None = field(default=None, metadata={DOC: "mqtts: the broker's CA"})
    metrics: str = field(
        default=METRICS_DEFAULT,
        metadata={DOC: "HOST:PORT for Prometheus /metrics and a status page at /, or 'off'"},
    )

    def __post_init__(self) -> None:
        problems = []
        if self.metrics != METRICS_OFF:
            try:
                parse_metrics_address(self.metrics)
            except ConfigError as exc:
                problems.append((True, str(exc).removeprefix("[telemetry] ")))
        if self.mqtt is not None:
            try:
                parse_broker(self.mqtt)
            except ConfigError as exc:
                problems.append((True, str(exc).removeprefix("[telemetry] ")))
        problems += [
            (
                not self.topic or bool(set("#+") & set(self.topic)),
                "topic must be a non-empty MQTT topic without wildcards",
            ),
            (
                self.password_file is not None and self.username is None,
                "password_file needs username",
            ),
            (
                self.ca_file is not None and not (self.mqtt or "").startswith("mqtts://"),
                "ca_file needs an mqtts:// broker",
            ),
        ]
        _raise_all(problems)


@dataclass(frozen=True)
class Partition:
    """Frames between group ``a`` and group ``b`` (member indices) are lost in [start, end)."""

    a: frozenset[int]
    b: frozenset[int]
    start: int
    end: int


def parse_partition(text: str) -> Partition:
    """``0,1,2|3,4@20:40``: the two groups cannot talk from round 20 until round 40."""
    try:
        groups, _, span = text.partition("@")
        left, right = groups.split("|")
        start, end = (int(v) for v in span.split(":"))
        a = frozenset(int(v) for v in left.split(","))
        b = frozenset(int(v) for v in right.split(","))
    except ValueError:
        raise ConfigError(f"bad partition {text!r}; expected A,B|C,D@START:END") from None
    if start >= end or a & b:
        raise ConfigError(f"bad partition {text!r}: empty span or overlapping groups")
    return Partition(a, b, start, end)


@dataclass(frozen=True)
class FaultsSection:
    """Injected faults, for the multi-process simulator's nodes; a real site leaves it out."""

    drop: float = field(default=0.0, metadata={DOC: "probability a frame is lost"})
    delay_ms: float = field(default=0.0, metadata={DOC: "mean frame latency"})
    slow: float = field(default=1.0, metadata={DOC: "training slowed by this factor"})
    partition: tuple[str, ...] = field(default=(), metadata={DOC: "A,B|C,D@R1:R2 spans"})
    partitions: tuple[Partition, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed, problems = [], []
        for text in self.partition:
            try:
                parsed.append(parse_partition(text))
            except ConfigError as exc:
                problems.append((True, str(exc)))
        problems += [
            (not 0 <= self.drop < 1, "drop must be in [0, 1)"),
            (self.delay_ms < 0, "delay_ms must be >= 0"),
            (not self.slow >= 1, "slow must be >= 1"),
        ]
        _raise_all(problems)
        object.__setattr__(self, "partitions", tuple(parsed))

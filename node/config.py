"""A site's node configuration (TOML), validated in full: every problem is reported at once.

```toml
[site]
key = "site-a.key"                     # written by `murmur keygen`, mode 0600
listen = "/ip4/0.0.0.0/tcp/4001"
state_dir = "state"                    # checkpoint and logs

[consortium]
seed = 0                               # public: initial model and round seeds
members = ["12D3KooW…", "12D3KooW…"]   # every site, same order everywhere (graph order)
topology = "ring"                      # any murmur topology over `members`, or
# edges = [["12D3KooW…", "12D3KooW…"], …]  # the graph itself; weights need every degree,
#                                       # so every site lists the same edges
peers = { "12D3KooW…" = "/ip4/10.0.0.2/tcp/4001" }   # addresses of the other members

[data]
source = "csv:/data/site.csv"          # or npz:PATH with x, y (and a held-out split),
target = "label"                       # or builtin:breast-cancer / builtin:ncctg-lung
# split = "auto"; alpha = 0.5          # builtin only: iid | dirichlet | natural | auto

[train]     # model, optimizer, lr, batch_size, local_steps, rounds, lr_schedule
[gossip]    # compressor, gamma ("auto" or a number), deadline_s, max_frame_bytes,
            # secure = "off" | "ckks" | "plain" (secure aggregation; needs block-k or rand-k)
[privacy]   # epsilon, delta (< 1/local records), clip = 1.0; rounds (the budget is spread
            # over these; default the first 15% of the planned rounds, at most 40),
            # weight = "records" (needs mean_records: the consortium's mean records per
            # site, set alike everywhere) | "equal";
            # optional noise_multiplier (else derived from ε, δ and the DP rounds),
            # accountant = "rdp" | "prv", secure_mode
[telemetry] # mqtt = "mqtt://127.0.0.1:1883" (or mqtts://), topic = "murmur";
            # username, password_file (a 0600 file holding the password), ca_file
            # (mqtts: trust this CA for the broker instead of the system's)
[faults]    # simulator only: drop, delay_ms, slow, partition ("A|B@R1:R2")
```

Send the node SIGHUP after editing ``[consortium]`` (members, topology, edges, peers) to
change the membership without a restart; see :mod:`node.membership`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import networkx as nx

from crypto.errors import BadSignatureError
from crypto.identity import public_key_from_peer_id
from node.compress import Compressor, SharedIndexCompressor, parse_compressor
from node.errors import ConfigError
from node.privacy import DpConfig
from node.site_data import BUILTIN_DATASETS
from node.trainer import TrainConfig
from topology import StaticTopology, Topology, TopologyError, build_topology

SPLITS = ("auto", "iid", "dirichlet", "natural")
SECURE_MODES = ("off", "ckks", "plain")


@dataclass(frozen=True)
class Partition:
    """Frames between group ``a`` and group ``b`` (member indices) are lost in [start, end)."""

    a: frozenset[int]
    b: frozenset[int]
    start: int
    end: int


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0
    delay_ms: float = 0.0
    slow: float = 1.0
    partitions: tuple[Partition, ...] = ()


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    key: Path
    listen: str
    state_dir: Path
    seed: int
    members: tuple[str, ...]
    topology: str
    peers: dict[str, str]
    edges: tuple[tuple[str, str], ...]
    source: str
    target: str | None
    eval_source: str | None
    split: str
    alpha: float | None
    model: str
    rounds: int
    train: TrainConfig
    compressor: str
    gamma: float | None
    deadline_s: float
    max_frame_bytes: int
    eval_every: int
    faults: Faults = field(default_factory=Faults)
    telemetry_url: str | None = None
    telemetry_prefix: str = "murmur"
    telemetry_username: str | None = None
    telemetry_password_file: Path | None = None  # 0600, read at start (crypto.keyfile)
    telemetry_ca_file: Path | None = None  # mqtts: the CA that signed the broker's cert
    secure: str = "off"  # off, ckks or plain: see node.secure_exchange
    dp: DpConfig | None = None  # [privacy]: DP-SGD with this budget (node.dp)
    method: str = "murmur"  # or murmur-gt: CHOCO with gradient tracking (node.tracking)


GOSSIP_METHODS = ("murmur", "murmur-gt")


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


class _Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.problems: list[str] = []

    def get(self, section: str, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        table = self.raw.get(section, {})
        if not isinstance(table, dict):
            self.problems.append(f"[{section}] must be a table")
            return None if default is ... else default
        if key not in table:
            if default is ...:
                self.problems.append(f"[{section}] {key} is missing")
                return None
            return default
        value = table[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.problems.append(f"[{section}] {key} must be {names}, got {value!r}")
            return None if default is ... else default
        return value

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node config; ConfigError lists every problem, one per line."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    r = _Reader(raw)
    base = path.parent

    def rel(value: str | None) -> Path:
        return base / (value or "")

    key = r.get("site", "key", str)
    listen = r.get("site", "listen", str, "/ip4/127.0.0.1/tcp/0")
    state_dir = r.get("site", "state_dir", str, "state")
    seed = r.get("consortium", "seed", int, 0)
    members = r.get("consortium", "members", list) or []
    topology = r.get("consortium", "topology", str, "ring")
    peers = r.get("consortium", "peers", dict) or {}
    for member in members:
        try:
            public_key_from_peer_id(str(member))
        except BadSignatureError as exc:
            r.problems.append(f"[consortium] members: {exc}")
    r.check(len(set(members)) == len(members), "[consortium] members has duplicates")
    edges = _edges(r)
    for peer, addr in peers.items():
        r.check(peer in members, f"[consortium] peers: {peer} is not in members")
        r.check(isinstance(addr, str) and addr.startswith("/"), f"bad multiaddr for {peer}")
    if len(members) >= 2 and topology:
        try:
            consortium_topology(tuple(members), topology, edges, seed)
        except (TopologyError, ValueError) as exc:
            r.problems.append(f"[consortium] {'edges' if edges else 'topology'}: {exc}")
    source = r.get("data", "source", str)
    if source is not None:
        kind, _, rest = source.partition(":")
        builtin = kind == "builtin" and rest in BUILTIN_DATASETS
        r.check(
            (kind in ("csv", "npz") and bool(rest)) or builtin,
            f"[data] source {source!r}: expected csv:PATH, npz:PATH or builtin:NAME with NAME "
            f"one of {', '.join(BUILTIN_DATASETS)}",
        )
    target = r.get("data", "target", str, None)
    if source and source.startswith("csv:"):
        r.check(target is not None, "[data] target (the label column) is required for csv")
    eval_source = r.get("data", "eval", str, None)
    split = r.get("data", "split", str, "auto")
    r.check(split in SPLITS, f"[data] split must be one of {', '.join(SPLITS)}, got {split!r}")
    alpha = r.get("data", "alpha", (int, float), None)
    r.check(alpha is None or alpha > 0, "[data] alpha must be positive")
    model = r.get("train", "model", str, "mlp:32")
    rounds = r.get("train", "rounds", int, 100)
    r.check(rounds is None or rounds > 0, "[train] rounds must be positive")
    train = _train_config(r)
    compressor = r.get("gossip", "compressor", str, "top-k:0.1")
    parsed: Compressor | None = None
    try:
        parsed = parse_compressor(compressor, seed, [[1, 1]] * max(1, len(members)))
    except ValueError as exc:
        r.problems.append(f"[gossip] compressor: {exc}")
    secure = r.get("gossip", "secure", str, "off")
    r.check(
        secure in SECURE_MODES,
        f"[gossip] secure must be one of {', '.join(SECURE_MODES)}, got {secure!r}",
    )
    if secure not in (None, "off") and parsed is not None:
        r.check(
            isinstance(parsed, SharedIndexCompressor),
            f"[gossip] secure = {secure!r} needs compressor block-k:F or rand-k:F (slots from "
            f"the public round seed, the same at every contributor), not {compressor!r}",
        )
    method = r.get("gossip", "method", str, "murmur")
    r.check(
        method in GOSSIP_METHODS,
        f"[gossip] method must be one of {', '.join(GOSSIP_METHODS)}, got {method!r}",
    )
    gamma_raw = r.get("gossip", "gamma", (str, float, int), "auto")
    gamma = None if gamma_raw == "auto" else gamma_raw
    r.check(
        gamma is None or (not isinstance(gamma, str) and 0 < gamma <= 1),
        f"[gossip] gamma must be 'auto' or in (0, 1], got {gamma_raw!r}",
    )
    deadline = r.get("gossip", "deadline_s", (int, float), 5.0)
    r.check(deadline is None or deadline > 0, "[gossip] deadline_s must be positive")
    max_frame = r.get("gossip", "max_frame_bytes", int, 16 * 2**20)
    eval_every = r.get("train", "eval_every", int, 1)
    faults = _faults(r)
    telemetry_url = r.get("telemetry", "mqtt", str, None)
    if telemetry_url is not None:
        try:
            parse_broker(telemetry_url)
        except ConfigError as exc:
            r.problems.append(str(exc))
    telemetry_prefix = r.get("telemetry", "topic", str, "murmur")
    r.check(
        telemetry_prefix is None or (telemetry_prefix and not set("#+") & set(telemetry_prefix)),
        "[telemetry] topic must be a non-empty MQTT topic without wildcards",
    )
    username = r.get("telemetry", "username", str, None)
    password_file = r.get("telemetry", "password_file", str, None)
    ca_file = r.get("telemetry", "ca_file", str, None)
    r.check(
        password_file is None or username is not None,
        "[telemetry] password_file needs username",
    )
    r.check(
        ca_file is None or (telemetry_url or "").startswith("mqtts://"),
        "[telemetry] ca_file needs an mqtts:// broker",
    )
    r.check(
        ca_file is None or rel(ca_file).is_file(),
        f"[telemetry] ca_file {ca_file!r} is not a file",
    )
    dp = _privacy(r)
    if r.problems:
        raise ConfigError(f"{path}: " + "; ".join(r.problems))
    return NodeConfig(
        path=path,
        key=rel(key),
        listen=listen,
        state_dir=rel(state_dir),
        seed=seed,
        members=tuple(members),
        topology=topology,
        peers=dict(peers),
        edges=edges,
        source=source,
        target=target,
        eval_source=eval_source,
        split=split or "auto",
        alpha=None if alpha is None else float(alpha),
        model=model,
        rounds=rounds,
        train=train,
        compressor=compressor,
        secure=secure or "off",
        dp=dp,
        gamma=None if gamma is None else float(gamma),
        deadline_s=float(deadline),
        max_frame_bytes=max_frame,
        eval_every=eval_every,
        faults=faults,
        telemetry_url=telemetry_url,
        telemetry_prefix=telemetry_prefix or "murmur",
        telemetry_username=username,
        telemetry_password_file=None if password_file is None else rel(password_file),
        telemetry_ca_file=None if ca_file is None else rel(ca_file),
        method=method or "murmur",
    )


def _edges(r: _Reader) -> tuple[tuple[str, str], ...]:
    raw = r.get("consortium", "edges", list, []) or []
    edges = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            r.problems.append(f"[consortium] edges: {pair!r} is not a [peer, peer] pair")
            continue
        edges.append((pair[0], pair[1]))
    return tuple(edges)


def _train_config(r: _Reader) -> TrainConfig:
    optimizer = r.get("train", "optimizer", str, "sgd")
    r.check(optimizer in ("sgd", "adam"), f"[train] optimizer must be sgd or adam: {optimizer!r}")
    lr = r.get("train", "lr", (int, float), 0.3)
    r.check(lr is None or lr > 0, "[train] lr must be positive")
    batch = r.get("train", "batch_size", int, 16)
    r.check(batch is None or batch > 0, "[train] batch_size must be positive")
    steps = r.get("train", "local_steps", int, 1)
    schedule = r.get("train", "lr_schedule", str, "cosine")
    r.check(schedule in ("cosine", "constant"), "[train] lr_schedule: cosine or constant")
    r.check(steps is None or steps > 0, "[train] local_steps must be positive")
    # Out-of-range values are already reported; build with safe ones to keep collecting.
    return TrainConfig(
        optimizer=optimizer if optimizer in ("sgd", "adam") else "sgd",
        lr=float(lr) if lr and lr > 0 else 0.3,
        batch_size=batch if batch and batch > 0 else 16,
        local_steps=steps if steps and steps > 0 else 1,
        momentum=float(r.get("train", "momentum", (int, float), 0.0) or 0.0),
        nesterov=bool(r.get("train", "nesterov", bool, False)),
        time_budget_s=_positive_or_none(r.get("train", "time_budget_s", (int, float), None)),
        prox_mu=float(r.get("train", "prox_mu", (int, float), 0.0) or 0.0),
        lr_schedule=schedule if schedule in ("cosine", "constant") else "cosine",
    )


def _positive_or_none(value: float | None) -> float | None:
    return None if value is None or value <= 0 else float(value)


def _privacy(r: _Reader) -> DpConfig | None:
    """``[privacy]``: absent, or epsilon = inf, means no DP."""
    if "privacy" not in r.raw:
        return None
    epsilon = r.get("privacy", "epsilon", (int, float))
    delta = r.get("privacy", "delta", (int, float))
    if epsilon is None or delta is None or math.isinf(epsilon):
        return None
    noise = r.get("privacy", "noise_multiplier", (int, float), None)
    rounds = r.get("privacy", "rounds", int, None)
    mean_records = r.get("privacy", "mean_records", (int, float), None)
    weight = str(r.get("privacy", "weight", str, "records"))
    if weight == "records" and mean_records is None:
        r.problems.append(
            '[privacy] weight = "records" (the default) needs mean_records: the consortium\'s '
            "mean number of training records per site, the same figure at every site; "
            'or set weight = "equal"'
        )
        return None
    try:
        return DpConfig(
            epsilon=float(epsilon),
            delta=float(delta),
            clip=float(r.get("privacy", "clip", (int, float), 1.0) or 1.0),
            noise_multiplier=None if noise is None else float(noise),
            accountant=str(r.get("privacy", "accountant", str, "rdp")),
            secure_mode=bool(r.get("privacy", "secure_mode", bool, False)),
            rounds=rounds,
            weight=weight,
            mean_records=None if mean_records is None else float(mean_records),
        )
    except ConfigError as exc:
        r.problems.append(f"[privacy] {exc}")
        return None


def _faults(r: _Reader) -> Faults:
    drop = r.get("faults", "drop", (int, float), 0.0)
    r.check(drop is None or 0 <= drop < 1, "[faults] drop must be in [0, 1)")
    partitions = []
    for text in r.get("faults", "partition", list, []) or []:
        try:
            partitions.append(parse_partition(str(text)))
        except ConfigError as exc:
            r.problems.append(f"[faults] {exc}")
    return Faults(
        drop=float(drop or 0.0),
        delay_ms=float(r.get("faults", "delay_ms", (int, float), 0.0) or 0.0),
        slow=float(r.get("faults", "slow", (int, float), 1.0) or 1.0),
        partitions=tuple(partitions),
    )

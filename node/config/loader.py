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
            # over these; default the first 15% of the planned rounds, at most 40, and
            # every planned round for a unet model),
            # weight = "records" (needs mean_records: the consortium's mean records per
            # site, set alike everywhere) | "equal";
            # optional noise_multiplier (else derived from ε, δ and the DP rounds),
            # accountant = "rdp" | "prv", secure_mode
[telemetry] # mqtt = "mqtt://127.0.0.1:1883" (or mqtts://), topic = "murmur";
            # username, password_file (a 0600 file holding the password), ca_file
            # (mqtts: trust this CA for the broker instead of the system's);
            # metrics = "127.0.0.1:9464" (Prometheus /metrics and a status page at /;
            # "off" turns it off)
[faults]    # simulator only: drop, delay_ms, slow, partition ("A|B@R1:R2")
```

Send the node SIGHUP after editing ``[consortium]`` (members, topology, edges, peers) to
change the membership without a restart; see :mod:`node.state.membership`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.config.schema import did_you_mean, read_section, table_lines
from node.config.sections import (
    ConsortiumSection,
    DataSection,
    FaultsSection,
    GossipSection,
    SiteSection,
    TelemetrySection,
    TrainSection,
)
from node.errors import ConfigError
from node.training.dp_config import DpConfig


@dataclass(frozen=True)
class NodeConfig:
    """A whole ``site.toml``; paths are resolved against the file's folder when loaded."""

    site: SiteSection
    consortium: ConsortiumSection
    data: DataSection
    train: TrainSection = field(default_factory=TrainSection)
    gossip: GossipSection = field(default_factory=GossipSection)
    privacy: DpConfig | None = None  # [privacy]: DP-SGD with this budget (node.training.dp)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    faults: FaultsSection = field(default_factory=FaultsSection)
    path: Path = Path("site.toml")

    def edit(self, **sections: dict[str, Any]) -> NodeConfig:
        """A copy with fields of the named sections changed, each section checked again:
        ``config.edit(data={"source": "npz:x.npz"}, train={"rounds": 5})``."""
        return replace(
            self,
            **{name: replace(getattr(self, name), **values) for name, values in sections.items()},
        )

    def to_toml(self, comments: bool = False, relative_to: Path | None = None) -> str:
        """The config as TOML that :func:`load_config` reads back to an equal config.

        ``comments``: a comment on every key, and unset optional keys commented out, for a
        file a person will edit. ``relative_to``: paths inside that folder (the key, state,
        data files) are written relative to it, so the folder can be moved as a whole.
        ``[faults]`` (the simulator's) is left out while it injects nothing."""
        base = None if relative_to is None else relative_to.absolute()
        config = (
            self
            if base is None
            else self.map_paths(lambda p: p.relative_to(base) if p.is_relative_to(base) else p)
        )
        out = []
        for f in fields(config):
            section = getattr(config, f.name)
            if f.name == "path" or section is None:
                continue
            if f.name == "faults" and section == FaultsSection():
                continue
            lines = table_lines(section, comments)
            out.append(f"[{f.name}]\n" + "".join(f"{line}\n" for line in lines))
        return "\n".join(out)

    def map_paths(self, move: Callable[[Path], Path]) -> NodeConfig:
        """Every file the config names (key, state, csv:/npz: data, telemetry files) through
        ``move``: resolved beside the config when loaded, made relative when written."""

        def maybe(path: Path | None) -> Path | None:
            return None if path is None else move(path)

        def source(text: str | None) -> str | None:
            if text is None or not text.startswith(FILE_SOURCES):
                return text
            kind, _, name = text.partition(":")
            return f"{kind}:{move(Path(name))}"

        return replace(
            self,
            site=replace(self.site, key=move(self.site.key), state_dir=move(self.site.state_dir)),
            data=replace(
                self.data,
                source=source(self.data.source) or self.data.source,
                eval_source=source(self.data.eval_source),
                features=maybe(self.data.features),
            ),
            telemetry=replace(
                self.telemetry,
                password_file=maybe(self.telemetry.password_file),
                ca_file=maybe(self.telemetry.ca_file),
            ),
        )


SECTIONS: dict[str, type] = {
    "site": SiteSection,
    "consortium": ConsortiumSection,
    "data": DataSection,
    "train": TrainSection,
    "gossip": GossipSection,
    "privacy": DpConfig,
    "telemetry": TelemetrySection,
    "faults": FaultsSection,
}


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node config; ConfigError lists every problem, on one line."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    problems = [
        f"unknown section [{name}]{did_you_mean(name, SECTIONS)}"
        for name in raw
        if name not in SECTIONS
    ]
    sections: dict[str, Any] = {
        name: read_section(cls, raw.get(name), name, problems)
        for name, cls in SECTIONS.items()
        if name != "privacy"
    }
    privacy = _privacy(raw.get("privacy"), problems)
    base = path.absolute().parent  # files sit beside the config, as the key does
    telemetry: TelemetrySection | None = sections["telemetry"]
    ca_file = None if telemetry is None else telemetry.ca_file
    if ca_file is not None and not (base / ca_file).is_file():
        problems.append(f"[telemetry] ca_file {str(ca_file)!r} is not a file")
    if problems or any(v is None for v in sections.values()):
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return NodeConfig(privacy=privacy, path=path, **sections).map_paths(lambda p: base / p)


FILE_SOURCES = ("csv:", "npz:")


def _privacy(table: Any, problems: list[str]) -> DpConfig | None:
    """``[privacy]``: absent, or epsilon = inf, means no DP."""
    if table is None:
        return None
    if isinstance(table, dict):
        epsilon = table.get("epsilon")
        if isinstance(epsilon, (int, float)) and math.isinf(epsilon):
            return None
    dp = read_section(DpConfig, table, "privacy", problems)
    if dp is not None and dp.weight == "records" and dp.mean_records is None:
        problems.append(
            '[privacy] weight = "records" (the default) needs mean_records: the consortium\'s '
            "mean number of training records per site, the same figure at every site; "
            'or set weight = "equal"'
        )
        return None
    return dp

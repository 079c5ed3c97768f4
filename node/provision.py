"""Consortium provisioning: ``murmur consortium init``, ``add-site`` and ``remove-site``.

The consortium's coordinator (the person who would run NVIDIA FLARE's ``provision``)
writes one folder per site: its identity key (mode 0600, from the OS CSPRNG), a complete
commented ``site.toml`` that lists every member, and a ``README.md`` of next steps. The
folders are sent to the sites over a channel the consortium trusts; a site that made its
own key with ``murmur keygen`` gives only its peer ID (``--peer-id a=12D3KooW…``), and
its key never leaves it. ``consortium.toml`` in the output folder records the members,
their addresses, the topology and the public seed; ``add-site`` and ``remove-site`` update
it and every site's ``[consortium]`` section, which a running node reloads on SIGHUP.

Paths in the written files are relative to each site's folder, so the folder works
wherever the site puts it.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from crypto.errors import BadSignatureError
from crypto.identity import SiteIdentity, load_key, public_key_from_peer_id, write_key
from murmur.files import atomic_write
from node import broker
from node.config import (
    ConsortiumSection,
    DataSection,
    NodeConfig,
    SiteSection,
    TelemetrySection,
    TrainSection,
    load_config,
)
from node.config.schema import table_lines, toml_value
from node.errors import ConfigError
from node.training.dp_config import DpConfig

MANIFEST = "consortium.toml"
DEFAULT_DATA, DEFAULT_TARGET = "csv:/data/murmur/site.csv", "label"  # each site edits them
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DEFAULT_PORT = 4001


@dataclass(frozen=True)
class Site:
    name: str
    peer_id: str
    address: str  # the multiaddr at which the other sites reach it


@dataclass(frozen=True)
class Manifest:
    """The consortium as its coordinator knows it (public: no secret is in here)."""

    seed: int
    topology: str
    sites: tuple[Site, ...]
    mqtt: str | None = None  # the consortium's broker (node.broker), when it runs one

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise ConfigError(f"no site called {name!r} in the consortium ({self.names()})")

    def names(self) -> str:
        return ", ".join(s.name for s in self.sites)

    def consortium(self, me: str) -> ConsortiumSection:
        """``[consortium]`` for site ``me``: every member, and the others' addresses."""
        return ConsortiumSection(
            seed=self.seed,
            members=tuple(s.peer_id for s in self.sites),
            topology=self.topology,
            peers={s.peer_id: s.address for s in self.sites if s.name != me},
        )

    def to_toml(self) -> str:
        lines = [
            "# Written by `murmur consortium`; edit with add-site / remove-site.",
            f"seed = {self.seed}  # public: initial model and round seeds",
            f"topology = {toml_value(self.topology)}",
            *([f"mqtt = {toml_value(self.mqtt)}"] if self.mqtt else []),
        ]
        for s in self.sites:
            lines += ["", "[[site]]", f"name = {toml_value(s.name)}"]
            lines += [f"peer_id = {toml_value(s.peer_id)}", f"address = {toml_value(s.address)}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, folder: Path, name: str = MANIFEST) -> Manifest:
        path = folder / name
        try:
            raw = tomllib.loads(path.read_text())
            sites = tuple(
                Site(str(s["name"]), str(s["peer_id"]), str(s["address"])) for s in raw["site"]
            )
            mqtt = None if raw.get("mqtt") is None else str(raw["mqtt"])
            return cls(int(raw["seed"]), str(raw["topology"]), sites, mqtt)
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: run `murmur consortium init` first") from None
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a consortium manifest ({exc})") from None


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"site name {name!r}: use lower-case letters, digits, '-' and '_' (it names a folder)"
        )


def _check_peer_id(name: str, peer_id: str) -> None:
    try:
        public_key_from_peer_id(peer_id)
    except BadSignatureError as exc:
        raise ConfigError(f"--peer-id {name}: {exc}") from None


def _default_address(name: str) -> str:
    return f"/dns4/{name}/tcp/{DEFAULT_PORT}"


def _data_section(data: str | None, target: str | None) -> DataSection:
    """``[data]`` as written for a new site: its source, and a target only for csv."""
    source = DEFAULT_DATA if data is None else data
    named = DEFAULT_TARGET if target is None else target
    return DataSection(source=source, target=named if source.startswith("csv:") else None)


def _port(address: str) -> int:
    match = re.search(r"/(?:tcp|udp)/(\d+)", address)
    return int(match.group(1)) if match else DEFAULT_PORT


def _privacy_template() -> list[str]:
    """A commented-out ``[privacy]`` section: DP is a consortium decision, off by default."""
    example = DpConfig(epsilon=3.0, delta=1e-5, weight="equal")
    lines = [
        "# [privacy]  # DP-SGD at this site; the consortium sets it alike everywhere",
        *(line if line.startswith("#") else f"# {line}" for line in table_lines(example, True)),
    ]
    return [*lines, ""]


def _site_config(manifest: Manifest, site: Site, data: DataSection, rounds: int) -> NodeConfig:
    return NodeConfig(
        site=SiteSection(key=Path("site.key"), listen=f"/ip4/0.0.0.0/tcp/{_port(site.address)}"),
        consortium=manifest.consortium(site.name),
        data=data,
        train=TrainSection(rounds=rounds),
        telemetry=(
            TelemetrySection()
            if manifest.mqtt is None
            else broker.site_telemetry(manifest.mqtt, site.name)
        ),
    )


def _write_site(folder: Path, config: NodeConfig, name: str = "site.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = config.to_toml(comments=True, relative_to=folder)
    template = "\n" + "\n".join(_privacy_template()) if config.privacy is None else ""
    atomic_write(path, (text + template).encode())
    return path


def _readme(manifest: Manifest, own_keys: set[str]) -> str:
    rows = "\n".join(
        f"| {s.name} | `{s.peer_id}` | `{s.address}` | "
        + ("site.key written here" if s.name not in own_keys else "the site's own key")
        + " |"
        for s in manifest.sites
    )
    return f"""# Murmur consortium: next steps

{len(manifest.sites)} sites, topology `{manifest.topology}`, public seed {manifest.seed}.

| site | peer ID | address | key |
|---|---|---|---|
{rows}

1. Send each site its folder over a channel you trust. `site.key` is that site's identity:
   whoever holds it can speak for the site. Keep no copy; it is mode 0600.
   A site that kept its own key puts it at `site.key` in its folder.
2. At each site, edit `site.toml`: `[data] source` (its own CSV or npz) and `target`,
   and `[site] listen` if the node must listen elsewhere. Leave `[consortium]` as written:
   every site must list the same members in the same order.
3. Check it: `murmur node --config site.toml --check-config`.
4. Start it: `murmur node --config site.toml`. Nodes wait for their neighbours; the
   order in which sites start does not matter.
5. To add or remove a site later: `murmur consortium add-site` / `remove-site` here
   (it also rewrites the folders still here), send every site the new `consortium.toml`
   (public), and at each site run
   `murmur consortium update --manifest consortium.toml --config site.toml`, which
   changes only `[consortium]`, then send the running node SIGHUP (`kill -HUP <pid>`):
   it reloads the membership at the next round boundary, without a restart.
""" + (
        ""
        if manifest.mqtt is None
        else f"""6. Telemetry: `broker/` is the consortium's MQTT broker ({manifest.mqtt}): copy it
   to the broker's host and run `mosquitto -c mosquitto.conf` in it. Each site's folder
   holds its own login (`mqtt.password`, 0600): a site may publish only under its own
   peer ID. Watch every site with
   `murmur watch --mqtt {manifest.mqtt} --password-file broker/watch.password`.
"""
    )


def init(
    out: Path,
    names: Sequence[str],
    *,
    topology: str = "ring",
    seed: int | None = None,
    addresses: Mapping[str, str] | None = None,
    peer_ids: Mapping[str, str] | None = None,
    data: str | None = None,
    target: str | None = None,
    rounds: int | None = None,
    mqtt: str | None = None,
) -> Manifest:
    """Write a new consortium under ``out``; refuses a folder that already holds one.
    ``mqtt``: the broker's URL, to write its config with a login per site (node.broker)."""
    addresses, peer_ids = dict(addresses or {}), dict(peer_ids or {})
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError("--sites needs at least two different site names")
    for name in names:
        _check_name(name)
    unknown = sorted((set(addresses) | set(peer_ids)) - set(names))
    if unknown:
        raise ConfigError(f"--address/--peer-id name sites that are not in --sites: {unknown}")
    if (out / MANIFEST).exists():
        raise ConfigError(f"{out / MANIFEST} exists: this folder already holds a consortium")
    for name, peer_id in peer_ids.items():
        _check_peer_id(name, peer_id)
    # Everything is checked before the first key is written.
    source = _data_section(data, target)
    identities = {n: SiteIdentity.generate() for n in names if n not in peer_ids}
    sites = tuple(
        Site(
            n,
            peer_ids[n] if n in peer_ids else identities[n].peer_id,
            addresses.get(n, _default_address(n)),
        )
        for n in names
    )
    manifest = Manifest(secrets.randbelow(2**31) if seed is None else seed, topology, sites, mqtt)
    planned = TrainSection.rounds if rounds is None else rounds
    configs = {s.name: _site_config(manifest, s, source, planned) for s in sites}  # validates
    out.mkdir(parents=True, exist_ok=True)
    for site in sites:
        folder = out / site.name
        folder.mkdir(parents=True, exist_ok=True)
        if site.name in identities:
            write_key(folder / "site.key", identities[site.name])
        _write_site(folder, configs[site.name])
    _write_broker(out, manifest)
    atomic_write(out / MANIFEST, manifest.to_toml().encode())
    atomic_write(out / "README.md", _readme(manifest, set(peer_ids)).encode())
    return manifest


def _rewrite_members(folder: Path, manifest: Manifest) -> list[Path]:
    """Give every site folder under ``folder`` the manifest's ``[consortium]``."""
    written = []
    for site in manifest.sites:
        path = folder / site.name / "site.toml"
        if not path.exists():
            continue  # a site that keeps its folder elsewhere gets the printed instructions
        config = load_config(path)
        updated = replace(config, consortium=manifest.consortium(site.name))
        written.append(_write_site(path.parent, updated))
    _write_broker(folder, manifest)
    atomic_write(folder / MANIFEST, manifest.to_toml().encode())
    return written


def _write_broker(folder: Path, manifest: Manifest) -> None:
    """The broker's logins and ACLs for the members as they now are (node.broker)."""
    if manifest.mqtt is not None:
        broker.write(folder, [(s.name, s.peer_id) for s in manifest.sites], manifest.mqtt)


def update(manifest_path: Path, config_path: Path) -> NodeConfig:
    """At a site: take ``[consortium]`` from the coordinator's (public) manifest and keep
    everything else in ``site.toml`` as the site set it."""
    manifest = Manifest.load(manifest_path.parent, manifest_path.name)
    config = load_config(config_path)
    me = load_key(config.site.key).peer_id
    mine = [s for s in manifest.sites if s.peer_id == me]
    if not mine:
        raise ConfigError(
            f"{manifest_path} does not list this site (peer ID {me}): it would leave the "
            "consortium; a removed site stops its node instead"
        )
    updated = replace(config, consortium=manifest.consortium(mine[0].name))
    _write_site(config_path.parent, updated, config_path.name)
    return updated


def add_site(
    folder: Path,
    name: str,
    *,
    address: str | None = None,
    peer_id: str | None = None,
    data: str | None = None,
    target: str | None = None,
) -> tuple[Manifest, list[Path]]:
    """Add a member: its folder (key unless ``peer_id``), and every site's new member list."""
    manifest = Manifest.load(folder)
    _check_name(name)
    if any(s.name == name for s in manifest.sites):
        raise ConfigError(f"the consortium already has a site called {name!r}")
    if peer_id is not None:
        _check_peer_id(name, peer_id)
    identity = None if peer_id is not None else SiteIdentity.generate()
    own_id = peer_id if identity is None else identity.peer_id
    site = Site(name, str(own_id), address or _default_address(name))
    grown = replace(manifest, sites=(*manifest.sites, site))
    existing = [s.name for s in manifest.sites if (folder / s.name / "site.toml").exists()]
    rounds = (
        load_config(folder / existing[0] / "site.toml").train.rounds
        if existing
        else TrainSection.rounds
    )
    config = _site_config(grown, site, _data_section(data, target), rounds)
    written = _rewrite_members(folder, grown)  # before the new folder: written once, below
    if identity is not None:
        (folder / name).mkdir(parents=True, exist_ok=True)
        write_key(folder / name / "site.key", identity)
    return grown, [*written, _write_site(folder / name, config)]


def remove_site(folder: Path, name: str) -> tuple[Manifest, list[Path]]:
    """Drop a member from every site's list; its folder (and key) is left for you to retire."""
    manifest = Manifest.load(folder)
    manifest.site(name)
    if len(manifest.sites) <= 2:
        raise ConfigError("a consortium needs at least two sites; this would leave one")
    shrunk = replace(manifest, sites=tuple(s for s in manifest.sites if s.name != name))
    for site in shrunk.sites:  # the graph must stay connected without it
        shrunk.consortium(site.name)
    return shrunk, _rewrite_members(folder, shrunk)

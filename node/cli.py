"""The ``murmur`` command. Bad input ends with one line naming the problem and exit code 2.

The node's own commands (``node``, ``keygen``, ``keys``, ``consortium``, ``data``,
``audit``, ``watch``) are
registered here. Other packages add
theirs by name, through the ``murmur.commands`` entry-point group (``murmur sim`` comes
from ``sim``), and data sources that must be prepared before a node starts (``builtin:``,
the try-out datasets) through ``murmur.sources``. So ``node`` never imports ``sim``
(dependencies point down: sim → node → crypto/topology), and a site's own package can
add a command or a source the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from murmur.errors import MurmurError
from node import audit_cli, data_cli, watch
from node.errors import ConfigError

if TYPE_CHECKING:
    from node.config import NodeConfig

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """One ``murmur NAME`` subcommand: its flags and what it does (returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}
SourcePreparer = Callable[["NodeConfig", int], "NodeConfig"]


def register_command(command: Command) -> None:
    """Add ``murmur <command.name>``; a second command of the same name is refused."""
    if command.name in COMMANDS and COMMANDS[command.name] != command:
        raise ConfigError(f"two murmur commands are called {command.name!r}")
    COMMANDS[command.name] = command


def _load_plugins(only: str | None = None) -> None:
    """Import the commands other packages add: just ``only`` when it is one of them (a
    node's start must not pull in the simulator), else all (for help and errors)."""
    entries = list(entry_points(group="murmur.commands"))
    if any(entry.name == only for entry in entries):
        entries = [entry for entry in entries if entry.name == only]
    for entry in entries:
        command = entry.load()
        if not isinstance(command, Command):
            raise ConfigError(f"entry point {entry.value} is not a murmur Command")
        register_command(command)


def source_preparer(kind: str) -> SourcePreparer | None:
    """The function that turns a ``kind:…`` data source into files a node reads, if any."""
    for entry in entry_points(group="murmur.sources", name=kind):
        prepare: SourcePreparer = entry.load()
        return prepare
    return None


class OneLineParser(argparse.ArgumentParser):
    """Argument errors become a ConfigError: one line, exit 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``murmur``; given the ``command`` about to run, only its plugin (if
    it is one) is imported."""
    if command not in COMMANDS:
        _load_plugins(command)
    parser = OneLineParser(
        prog="murmur", description="Decentralized gossip learning for hospitals."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for known in COMMANDS.values():
        known.add_arguments(sub.add_parser(known.name, help=known.help))
    return parser


def _keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="key file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key")


def _keygen(args: argparse.Namespace) -> int:
    from crypto.identity import SiteIdentity, write_key

    identity = SiteIdentity.generate()
    write_key(args.out, identity, overwrite=args.force)
    print(identity.peer_id)
    return 0


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")


def _node(args: argparse.Namespace) -> int:
    from crypto.identity import load_key
    from node.config import load_config

    path: Path = args.config
    config = load_config(path)
    identity = load_key(config.site.key)
    if identity.peer_id not in config.consortium.members:
        raise ConfigError(f"{path}: this site's peer ID {identity.peer_id} is not a member")
    if args.check_config:
        print(f"{path}: OK ({len(config.consortium.members)} members, peer ID {identity.peer_id})")
        return 0
    kind = config.data.source.partition(":")[0]
    prepare = source_preparer(kind)
    if prepare is not None:
        config = prepare(config, config.consortium.members.index(identity.peer_id))
    from node.launch import main as run_node

    return run_node(config)


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="retire the encryption key and make a new one")
    rotate.add_argument("--config", type=Path, required=True, help="site.toml")
    unpin = keys_sub.add_parser("unpin", help="accept a neighbour's rotated encryption key")
    unpin.add_argument("--config", type=Path, required=True, help="site.toml")
    unpin.add_argument("--peer", required=True, help="the neighbour's peer ID")


def _keys(args: argparse.Namespace) -> int:
    from node import key_admin
    from node.config import load_config

    config = load_config(args.config)
    if args.keys_command == "rotate":
        print(f"new encryption key {key_admin.rotate(config)}; now unpin it on each neighbour")
        return 0
    if not key_admin.unpin(config, args.peer):
        raise ConfigError(f"no encryption key is pinned for {args.peer} in {config.site.state_dir}")
    print(f"unpinned {args.peer}; its next key will be pinned")
    return 0


def _pairs(text: str) -> dict[str, str]:
    """``a=X,b=Y`` → {"a": "X", "b": "Y"} (values may hold '/', not ',')."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"expected SITE=VALUE pairs separated by commas, got {part!r}")
        pairs[name] = value
    return pairs


def _consortium_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="consortium_command", required=True)
    init = sub.add_parser("init", help="write every site's key, site.toml and next steps")
    init.add_argument("--sites", required=True, help="comma list of site names, graph order")
    init.add_argument("--out", type=Path, required=True, help="folder to write")
    init.add_argument("--topology", default="ring", help="the consortium graph (as --topology)")
    init.add_argument("--seed", type=int, help="public seed (default: drawn at random)")
    init.add_argument("--rounds", type=int, help="planned rounds ([train] default)")
    init.add_argument(
        "--mqtt", help="the consortium's MQTT broker URL: write its config, a login per site"
    )
    for p in (init, add := sub.add_parser("add-site", help="add a member; update every site")):
        p.add_argument("--data", help="[data] source to write (default csv:/data/murmur/site.csv)")
        p.add_argument("--target", help="[data] target for csv (default label)")
    init.add_argument(
        "--address", default="", help="SITE=MULTIADDR,... (default /dns4/SITE/tcp/4001)"
    )
    init.add_argument(
        "--peer-id", default="", help="SITE=PEER_ID,... for sites that keep their own key"
    )
    remove = sub.add_parser("remove-site", help="drop a member from every site's config")
    update = sub.add_parser(
        "update", help="at a site: take [consortium] from the coordinator's manifest"
    )
    update.add_argument("--manifest", type=Path, required=True, help="consortium.toml")
    update.add_argument("--config", type=Path, required=True, help="this site's site.toml")
    for p in (add, remove):
        p.add_argument("--dir", type=Path, required=True, help="the folder init wrote")
        p.add_argument("--site", required=True, help="the site's name")
    add.add_argument("--address", help="its multiaddr (default /dns4/SITE/tcp/4001)")
    add.add_argument("--peer-id", help="its peer ID, if it keeps its own key")


def _consortium(args: argparse.Namespace) -> int:
    from node import provision

    if args.consortium_command == "init":
        names = [n.strip() for n in args.sites.split(",") if n.strip()]
        manifest = provision.init(
            args.out,
            names,
            topology=args.topology,
            seed=args.seed,
            addresses=_pairs(args.address),
            peer_ids=_pairs(args.peer_id),
            data=args.data,
            target=args.target,
            rounds=args.rounds,
            mqtt=args.mqtt,
        )
        print(f"wrote {len(manifest.sites)} sites to {args.out}/; next steps: {args.out}/README.md")
        return 0
    if args.consortium_command == "update":
        config = provision.update(args.manifest, args.config)
        members = len(config.consortium.members)
        print(f"{args.config}: {members} members; send the running node SIGHUP to apply")
        return 0
    if args.consortium_command == "add-site":
        manifest, written = provision.add_site(
            args.dir,
            args.site,
            address=args.address,
            peer_id=args.peer_id,
            data=args.data,
            target=args.target,
        )
    else:
        manifest, written = provision.remove_site(args.dir, args.site)
    print(
        f"{len(manifest.sites)} sites ({manifest.names()}); rewrote {len(written)} site.toml "
        f"files here; send every site {args.dir / provision.MANIFEST} for "
        "`murmur consortium update`, then SIGHUP its running node"
    )
    return 0


for _command in (
    Command("node", "run this site's node from its config file", _node_arguments, _node),
    Command(
        "keygen", "create a site key (mode 0600) and print its peer ID", _keygen_arguments, _keygen
    ),
    Command("keys", "rotate this site's encryption key (node.key_admin)", _keys_arguments, _keys),
    Command(
        "consortium",
        "provision a consortium: keys, site.toml files, add or remove a site",
        _consortium_arguments,
        _consortium,
    ),
    Command(
        "data",
        "the consortium's feature statistics from each site's moments (node.data_cli)",
        data_cli.add_arguments,
        data_cli.run,
    ),
    Command(
        "audit",
        "verify, show or cross-check the audit logs nodes keep (node.audit)",
        audit_cli.add_arguments,
        audit_cli.run,
    ),
    Command(
        "watch",
        "a live view of the consortium from its MQTT status topics or metrics (node.watch)",
        watch.add_arguments,
        watch.run,
    ),
):
    register_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = words[0] if words and not words[0].startswith("-") else None
    try:
        args = build_parser(first).parse_args(words)
        return COMMANDS[args.command].run(args)
    except MurmurError as exc:
        print(f"murmur: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("murmur: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # ``python -m node.cli`` (how the simulators start nodes): run the imported module's
    # main, so plugins register with the same Command class and table as everyone else.
    from node.cli import main as imported_main

    sys.exit(imported_main())

"""The ``murmur`` command. Bad input ends with one line naming the problem and exit code 2.

Subcommands are dispatched lazily, so ``murmur`` stays the only place that reaches into
``sim`` (dependencies point down: sim → node → crypto/topology).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from crypto.errors import CryptoError
from node.errors import ConfigError, TransportError

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """Argument errors become a ConfigError: one line, exit 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="murmur", description="Decentralized gossip learning for hospitals."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "sim", help="simulate N sites and compare learning methods on one data split"
    )
    from sim.runner import add_arguments

    add_arguments(sim)
    keygen = sub.add_parser("keygen", help="create a site key (mode 0600) and print its peer ID")
    keygen.add_argument("--out", type=Path, required=True, help="key file to write")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keys = sub.add_parser("keys", help="rotate this site's encryption key (node.key_admin)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="retire the encryption key and make a new one")
    rotate.add_argument("--config", type=Path, required=True, help="site.toml")
    unpin = keys_sub.add_parser("unpin", help="accept a neighbour's rotated encryption key")
    unpin.add_argument("--config", type=Path, required=True, help="site.toml")
    unpin.add_argument("--peer", required=True, help="the neighbour's peer ID")
    node = sub.add_parser("node", help="run this site's node from its config file")
    node.add_argument("--config", type=Path, required=True, help="site.toml")
    node.add_argument("--check-config", action="store_true", help="validate the config and exit")
    return parser


def _keygen(path: Path, force: bool) -> int:
    from crypto.identity import SiteIdentity, write_key

    identity = SiteIdentity.generate()
    write_key(path, identity, overwrite=force)
    print(identity.peer_id)
    return 0


def _node(path: Path, check_only: bool) -> int:
    from crypto.identity import load_key
    from node.config import load_config

    config = load_config(path)
    identity = load_key(config.key)
    if identity.peer_id not in config.members:
        raise ConfigError(f"{path}: this site's peer ID {identity.peer_id} is not a member")
    if check_only:
        print(f"{path}: OK ({len(config.members)} members, peer ID {identity.peer_id})")
        return 0
    if config.source.startswith("builtin:"):
        from sim.builtin import materialize

        config = materialize(config, config.members.index(identity.peer_id))
    from node.runtime import main as run_node

    return run_node(config)


def _keys(command: str, path: Path, peer: str | None) -> int:
    from node import key_admin
    from node.config import load_config

    config = load_config(path)
    if command == "rotate":
        print(f"new encryption key {key_admin.rotate(config)}; now unpin it on each neighbour")
        return 0
    assert peer is not None
    if not key_admin.unpin(config, peer):
        raise ConfigError(f"no encryption key is pinned for {peer} in {config.state_dir}")
    print(f"unpinned {peer}; its next key will be pinned")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "sim":
            from sim.runner import run

            run(args)
            return 0
        if args.command == "keygen":
            return _keygen(args.out, args.force)
        if args.command == "keys":
            return _keys(args.keys_command, args.config, getattr(args, "peer", None))
        if args.command == "node":
            return _node(args.config, args.check_config)
    except (ConfigError, ValueError, CryptoError, TransportError) as exc:
        print(f"murmur: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("murmur: interrupted", file=sys.stderr)
        return 130
    print(f"murmur: error: unknown command {args.command!r}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The ``murmur`` command. Bad input ends with one line naming the problem and exit code 2.

Subcommands are dispatched lazily, so ``murmur`` stays the only place that reaches into
``sim`` (dependencies point down: sim → node → crypto/topology).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from node.errors import ConfigError

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "sim":
            from sim.runner import run

            run(args)
            return 0
    except (ConfigError, ValueError) as exc:
        print(f"murmur: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("murmur: interrupted", file=sys.stderr)
        return 130
    print(f"murmur: error: unknown command {args.command!r}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

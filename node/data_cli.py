"""``murmur data``: the consortium's feature statistics, from each site's moments.

Every site must encode its CSV with the same statistics and categories
(:mod:`node.training.features`). Each site runs ``murmur data moments`` on its own
training file: it writes the count, Σx and Σx² of each numeric column, the category
values of the others and the label values, and no row. Whoever the consortium trusts
with those aggregates adds them with ``murmur data features`` and gives every site the
result, which its ``site.toml`` names as ``[data] features``.

Other packages add ``murmur data`` subcommands through the ``murmur.data`` entry-point
group (``make-brats`` comes from ``sim``), so ``node`` never imports them.
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from murmur.files import atomic_write
from node.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    moments = sub.add_parser("moments", help="this site's column moments (no rows) as JSON")
    moments.add_argument("--csv", type=Path, required=True, help="this site's training CSV")
    moments.add_argument("--target", required=True, help="the label column")
    moments.add_argument("--out", type=Path, required=True)
    features = sub.add_parser("features", help="add every site's moments into [data] features")
    features.add_argument("moments", type=Path, nargs="+", help="each site's moments file")
    features.add_argument("--out", type=Path, required=True)
    for command in _plugins().values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))


def _plugins() -> dict[str, Any]:
    """The ``murmur data`` subcommands other packages register (``node.cli.Command``s)."""
    return {entry.name: entry.load() for entry in entry_points(group="murmur.data")}


def run(args: argparse.Namespace) -> int:
    plugins = _plugins()
    if args.data_command in plugins:
        code: int = plugins[args.data_command].run(args)
        return code
    # pandas loads when the command runs, not with every `murmur` command
    from node.training.features import Featurizer, Moments, total

    if args.data_command == "moments":
        from node.training.data import csv_moments

        m = csv_moments(args.csv, args.target)
        atomic_write(args.out, (json.dumps(m.to_json(), indent=1) + "\n").encode())
        print(
            f"{args.out}: moments of {int(m.count.max(initial=0))} rows, {len(m.numeric)} "
            f"numeric and {len(m.categories)} categorical columns"
        )
        return 0
    parts = []
    for path in args.moments:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        parts.append(Moments.from_json(raw, path))
    featurizer = Featurizer.from_moments(total(parts))
    featurizer.save(args.out)
    print(
        f"{args.out}: {featurizer.width} features from {len(parts)} sites' moments, "
        f"classes {list(featurizer.classes)}; give it to every site as [data] features"
    )
    return 0

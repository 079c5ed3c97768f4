"""A ``murmur node`` process whose audit log writes nothing: the reference run against
which :mod:`benchmarks.audit` measures what the log costs real nodes. Never for a site."""

from __future__ import annotations

import sys

import node.runtime
from benchmarks.audit import Silent
from node.cli import main

if __name__ == "__main__":
    setattr(node.runtime, "AuditLog", Silent)  # noqa: B010  (the name the node builds its log by)
    sys.exit(main(["node", *sys.argv[1:]]))

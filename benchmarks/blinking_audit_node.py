"""A ``murmur node`` process whose audit log is kept in alternate blocks of rounds
(:class:`benchmarks.audit.Blinking`), so :mod:`benchmarks.audit` can compare rounds with
and without the log inside one run of real nodes. Never for a site: its log has gaps."""

from __future__ import annotations

import sys

import node.runtime
from benchmarks.audit import Blinking
from node.cli import main

if __name__ == "__main__":
    setattr(node.runtime, "AuditLog", Blinking)  # noqa: B010  (the name the node builds its log by)
    sys.exit(main(["node", *sys.argv[1:]]))

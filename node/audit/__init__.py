"""A site's tamper-evident audit log: what its node sent, received, opened and spent.

- :mod:`.log`: the append-only, hash-chained log each node writes, signed with its site key;
- :mod:`.check`: verifying a log (edits, deletions, reordering, truncation) and
  cross-checking two neighbours' logs against each other.
"""

"""What goes on the wire: signed frames and their guard, the ``update`` payload codec (the
one source of byte counts, for nodes and simulators alike), secure-aggregation payloads,
and exact msgpack sizes."""

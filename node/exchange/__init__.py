"""Secure neighbourhood aggregation: who aggregates for whom (``plan``), one site's side
of the protocol (``secure``), and what survives a missed round (``outbox``)."""

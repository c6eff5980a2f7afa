"""Ingest adapters: turn a protocol's media units into the hub's ``Track``/``Frame`` model."""

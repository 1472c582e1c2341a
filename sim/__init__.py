"""Deterministic discrete-event simulator running the real ``protocols/`` objects."""

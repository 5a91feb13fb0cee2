"""Latency decisions: the never-slower check (`never_slower`); the backends timing them live beside it."""

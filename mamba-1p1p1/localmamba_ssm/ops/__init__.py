"""Selective-scan ops (public functions, references, backends)."""

"""Command-line overrides as (key, value) pairs, read the same way by every module that lists them."""

from __future__ import annotations


def split_override(override: str) -> tuple[str, str]:
    """A command-line override as (key, value): ``+model.dropout=0.5`` -> ("model.dropout", "0.5")."""
    key, _, value = override.partition("=")
    return key.strip().lstrip("+~"), value.strip()

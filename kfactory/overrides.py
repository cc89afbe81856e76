"""Command-line overrides as (key, value) pairs, read the same way by every module that lists them."""

from __future__ import annotations


def split_override(override: str) -> tuple[str, str]:
    """A command-line override as (key, value): ``+model.dropout=0.5`` -> ("model.dropout", "0.5")."""
    key, _, value = override.partition("=")
    return key.strip().lstrip("+~"), value.strip()


def rerun_command(overrides: list[str], drop: tuple[str, ...], extra: list[str]) -> str:
    """``python run.py`` with ``overrides`` less the ``drop`` keys and ``hydra.*`` settings, plus ``extra``."""
    kept = [o for o in overrides if (key := split_override(o)[0]) not in drop and not key.startswith("hydra.")]
    return " ".join(["python run.py", *(_quoted(o) for o in [*kept, *extra])])


def _quoted(override: str) -> str:
    return f"'{override}'" if any(c in override for c in " ()[]{},$*?") else override

"""Hydra plugins kfactory can use, and the pip extra that installs each.

Hydra fails at compose time when a command names a launcher or sweeper whose
plugin is not installed ("Could not find 'hydra/launcher/ray'"), before any
kfactory code runs; this check runs first and names the extra to install.
No TensorFlow here: it sits on the command line's cold path.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from kfactory.overrides import split_override

# (config group, option) -> (plugin module, pip extra)
PLUGINS: dict[tuple[str, str], tuple[str, str]] = {
    # kfactory ships its Optuna sweeper (hydra_plugins/kfactory_optuna_sweeper); it needs Optuna itself
    ("hydra/sweeper", "kfactory_optuna"): ("optuna", "sweep"),
    ("hparams_search", "optuna"): ("optuna", "sweep"),
    ("experiment", "auto"): ("optuna", "sweep"),  # a search with kfactory's Optuna sweeper
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("hydra/launcher", "ray_aws"): ("hydra_plugins.hydra_ray_launcher", "ray"),
}


def missing_plugin(overrides: Sequence[str]) -> str | None:
    """The message for the first override whose plugin is absent, else None."""
    for override in overrides:
        if "=" not in override:
            continue
        key, value = split_override(override)
        entry = PLUGINS.get((key, value))
        if entry is None:
            continue
        module, extra = entry
        if not _installed(module):
            return (
                f"{key}={value} needs {describe(module)}, which is not installed: "
                f"pip install -e '.[{extra}]' in the kfactory checkout"
                f" (or pip install 'kfactory-<version>.whl[{extra}]')"
            )
    return None


def require_plugins(overrides: Sequence[str]) -> None:
    """Exit with status 2 and one line naming the extra if a named plugin is missing."""
    message = missing_plugin(overrides)
    if message is not None:
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2)


def describe(module: str) -> str:
    """'the Hydra plugin hydra_ray_launcher' for a plugin module, else the package's name."""
    return f"the Hydra plugin {module.split('.')[-1]}" if module.startswith("hydra_plugins.") else module


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the hydra_plugins namespace itself is absent
        return False

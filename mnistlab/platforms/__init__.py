"""How a config is learned: one module per platform behind one small interface.

A platform module offers:
- NAME and SUFFIX: its name in `platform:` and its checkpoints' file suffix;
- problems(cfg): the settings it cannot honour, as config problems, before anything is written
  (without importing its framework);
- facts(): {"name", "version", "backend"} for summary.json;
- train(session): set up, open or reopen the run (run.Session), train up to session.until
  writing through the run (run.Run), save and raise KeyboardInterrupt when session.stop is set.
Everything else (config, run directory, metrics log, summary, sweeps, reports) is shared.
Each framework is imported by its own module only, when that platform is used.
"""

from __future__ import annotations

from types import ModuleType


def _torch() -> ModuleType:
    from . import pytorch

    return pytorch


def _keras() -> ModuleType:
    from . import keras

    return keras


def _tensorflow() -> ModuleType:
    from . import tensorflow

    return tensorflow


def _jax() -> ModuleType:
    from . import jax

    return jax


PLATFORMS = {"torch": _torch, "keras": _keras, "tensorflow": _tensorflow, "jax": _jax}


def get(name: str) -> ModuleType:
    """The platform module of a name of the config's `platform:` setting."""
    return PLATFORMS[name]()

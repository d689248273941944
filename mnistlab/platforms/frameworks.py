"""Importing TensorFlow, Keras and JAX: the optional extras, the import order, threads and seeds.

Only the platform modules call these, when their platform is used.

Import order: `import tensorflow` followed by `import triton` crashes the process (a segfault in
the two libraries' native code), while the reverse order is fine. triton comes with torch, and
torch imports it late (torch._dynamo, on a torch optimizer's first step, or Keras's torch
backend), so TensorFlow is only ever imported here, after torch._dynamo (and triton with it).
Then a torch run, a Keras run on any backend and a TensorFlow run can follow each other in one
process in any order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import sys

from ..errors import ConfigError

# the extra that brings each framework, and what it is for
EXTRAS = {"tensorflow": "tensorflow", "keras": "keras", "jax": "jax"}


def install_hint(extra: str) -> str:
    return (f"install it with: pip install -e \".[{extra}]\" in the mnistlab checkout (or pip "
            f"install \"mnistlab[{extra}]\"); \".[platforms]\" brings every platform")


def missing(modules: list[str]) -> list[str]:
    """The modules of the list that cannot be imported, found without importing them."""
    out = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # import of it blocked
                out.append(name)
            continue
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def extra_problems(setting: str, modules: list[str], extra: str) -> list[str]:
    """A config problem when a platform's packages are not installed."""
    gone = missing(modules)
    if not gone:
        return []
    return [f"{setting}: needs {' and '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} "
            f"not installed (the core install is PyTorch only); {install_hint(extra)}"]


def _not_installed(name: str, extra: str) -> ConfigError:
    return ConfigError([f"platform: {name} cannot be imported (it is not installed, or its "
                        f"install is broken); {install_hint(extra)}"])


def triton_first() -> None:
    """Import triton now, before TensorFlow can be imported: itself, not through torch._dynamo,
    which a torch run in the same process may have replaced by its light stand-in
    (platforms/pytorch.py's EagerDynamo) that imports nothing."""
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def tensorflow(threads: int, extra: str = "tensorflow"):
    """TensorFlow, imported after triton, with train.threads set before its first op."""
    triton_first()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its start-up banners are not our output
    try:
        import tensorflow as tf
    except ImportError:
        raise _not_installed("tensorflow", extra) from None
    set_tensorflow_threads(tf, threads)
    return tf


def set_tensorflow_threads(tf, threads: int) -> None:
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow is running already: its pools are fixed for this process
        now = tf.config.threading.get_intra_op_parallelism_threads()
        if now != threads:
            raise ConfigError([
                f"train.threads: {threads}, but TensorFlow already runs in this process with "
                f"{now or 'all'} threads, and it takes its thread counts only before its first "
                "operation; run this config in a process of its own (mnistlab train ...), or "
                f"give train.threads={now}"]) from None


def keras_backend_problem(backend: str, setting: str) -> list[str]:
    """Keras picks its backend once per process, when it is first imported."""
    module = sys.modules.get("keras")
    if module is None:
        return []
    try:
        loaded = module.backend.backend()
    except AttributeError:
        return []
    if loaded == backend:
        return []
    return [f"{setting}: Keras runs on {backend} here, but Keras was already imported in this "
            f"Python process with the {loaded} backend, and Keras chooses its backend once per "
            f"process; run this config in a process of its own (mnistlab train ... or a sweep, "
            f"which starts one per trial), or use keras.backend={loaded}"]


def keras(backend: str, threads: int, extra: str = "keras"):
    """Keras 3 on the backend, imported after the backend itself is set up (threads, order)."""
    problem = keras_backend_problem(backend, "keras.backend")
    if problem:
        raise ConfigError(problem)
    if backend == "tensorflow":
        tensorflow(threads, extra)
    elif backend == "torch":
        triton_first()  # Keras's torch backend imports torch._dynamo anyway
    elif backend == "jax":
        jax(threads, extra)
    before = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = backend
    try:
        import keras as k
    except ImportError:
        raise _not_installed("keras", extra) from None
    finally:
        if before is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = before
    return k


def cpus() -> int:
    """The CPUs this process may run on: what a framework uses when train.threads is 0."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def jax(threads: int, extra: str = "jax"):
    """JAX, its CPU threads limited by CPU affinity (its XLA flags are ignored on this CPU)."""
    if threads and "jax" not in sys.modules and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        before = set(cpus)
        os.sched_setaffinity(0, cpus[:threads])
        try:
            return _import_jax(extra)
        finally:
            os.sched_setaffinity(0, before)  # the pools are sized; the rest of the process is not limited
    return _import_jax(extra)


def _import_jax(extra: str):
    try:
        import jax as j

        j.devices()  # sizes its thread pools now, under the affinity
    except ImportError:
        raise _not_installed("jax", extra) from None
    return j


def seed_all(seed: int, backend: str) -> None:
    """random, numpy and the backend's own generator, seeded directly (keras.utils.set_random_seed
    would import TensorFlow whenever it is installed)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(seed)
    elif backend == "torch":
        import torch

        torch.manual_seed(seed)
    # jax has no global generator: its keys are made from the seed where they are drawn

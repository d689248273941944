"""train.precision: auto picks fp32 or bf16 from what this machine does, measured once and cached."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# bf16 must beat fp32 by this much to be chosen: below it, fp32's exact numbers are worth more
MARGIN = 1.05


@dataclass
class Choice:
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 features (AMX, AVX512-BF16); without them bf16 is emulated, slowly."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"amx_bf16", "avx512_bf16"})


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return root / "mnistlab" / "precision.json"


def _key(model: nn.Module, x: torch.Tensor, device: torch.device) -> str:
    shapes = [list(p.shape) for p in model.parameters()]
    what = {"cpu": cpu_model(), "device": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "model": type(model).__name__, "params": shapes,
            "input": list(x.shape)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache() -> dict:
    from .files import read_json

    try:
        cache = read_json(_cache_path())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached(key: str) -> dict | None:
    """The step times measured earlier for key, or None when the cache has no usable entry."""
    entry = _read_cache().get(key)
    if not isinstance(entry, dict):
        return None
    times = {name: entry.get(name) for name in ("fp32", "bf16")}
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
           for t in times.values()):
        return {name: float(t) for name, t in times.items()}
    return None


def _write_cache(key: str, entry: dict) -> None:
    from .files import atomic_write_text

    cache = _read_cache()
    cache[key] = entry
    try:
        _cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_cache_path(), json.dumps(cache, indent=1))
    except Exception:  # a cache that cannot be written only costs a measurement next time
        pass


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, bf16: bool,
                 steps: int = 3) -> float:
    """Median seconds of one forward + backward + SGD step, after one warm-up step."""
    device = x.device
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def choose(precision: str, device: torch.device, model: nn.Module | None = None,
           x: torch.Tensor | None = None, y: torch.Tensor | None = None, loss_fn=None) -> Choice:
    """fp32 or bf16 for this run, with the reason (recorded in summary.json).

    auto: on a GPU, bf16 where the GPU computes it natively; on a CPU without native bf16, fp32;
    on a CPU with it, whichever of the two trains the model's own batch faster, measured once
    per CPU model, torch version, thread count and model shape, then read from the cache.
    """
    if precision != "auto":
        return Choice(precision == "bf16", "asked for (train.precision)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice(True, f"auto: {torch.cuda.get_device_name(device)} computes bf16 natively")
        return Choice(False, "auto: this GPU has no native bf16")
    if device.type != "cpu":
        return Choice(False, f"auto: fp32 on {device.type}")
    flags = cpu_bf16_flags()
    if not flags:
        return Choice(False, f"auto: {cpu_model()} has no native bf16 (no AMX, no AVX512-BF16), "
                             "so bf16 would be emulated and slower")
    key = _key(model, x, device)
    entry = cached(key)
    if entry is None:
        entry = measure_both(model, x, y, loss_fn)
        _write_cache(key, entry)
        how = "measured"
    else:
        how = "measured earlier"
    bf16 = entry["bf16"] * MARGIN < entry["fp32"]
    ratio = entry["fp32"] / entry["bf16"]
    return Choice(bf16, f"auto: {how} on this {cpu_model()} ({', '.join(flags) or 'no native bf16'}): "
                        f"a training step takes {1000 * entry['fp32']:.1f} ms in fp32 and "
                        f"{1000 * entry['bf16']:.1f} ms in bf16 ({ratio:.2f}x)")


def measure_both(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict:
    """Step times in fp32 and bf16 on a copy of the model; the run's RNG streams are left as they were."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        probe = copy.deepcopy(model).train()
        times = {"fp32": [], "bf16": []}
        for _ in range(2):  # interleaved, so a noisy neighbour hits both
            for name in ("fp32", "bf16"):
                times[name].append(step_seconds(probe, x, y, loss_fn, name == "bf16"))
    return {name: min(t) for name, t in times.items()}


def for_eval(precision: str, recorded: str | None, conv: bool) -> bool:
    """Evaluation uses the precision the run trained in (older checkpoints: the rule of their day)."""
    if precision != "auto":
        return precision == "bf16"
    if recorded is not None:
        return recorded == "bf16"
    return conv and bool(cpu_bf16_flags())

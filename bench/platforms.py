"""The course's comparison in one run: the same networks and hyperparameters on each platform.

    python bench/platforms.py                       # dense 3 epochs, conv 2 epochs, full data, seeds 0 1
    python bench/platforms.py --epochs 1 --train-samples 6000 --seeds 0      # a quick look

The dense and the conv net of configs/dense.yaml and configs/cnn.yaml, as written (onecycle,
cnn.yaml's whitened first conv), on Fashion-MNIST, trained by torch, keras (tensorflow backend,
and its torch and jax backends) and tensorflow. Each run is `python -m mnistlab train ... --quiet`
in a process of its own, so that its peak memory (the resident set of that process, from
os.wait4) and its import order are its own. Platforms are interleaved within each seed, in the
opposite order on the next seed, so that the machine's noise spreads over all of them. The table
shows medians over the seeds and ratios to torch (of the medians); seconds per epoch are the
run's training seconds (evaluation excluded) over its epochs. The machine is shared: the load
average is read before starting (waiting up to --wait minutes for it to fall below --max-load)
and at the end, and printed with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"dense": "dense.yaml", "conv": "cnn.yaml"}
# (label, overrides); keras.backend=torch and jax on the conv net: --conv-backends
PLATFORMS = {
    "torch": ["platform=torch"],
    "keras-tensorflow": ["platform=keras", "keras.backend=tensorflow"],
    "keras-torch": ["platform=keras", "keras.backend=torch"],
    "keras-jax": ["platform=keras", "keras.backend=jax"],
    "tensorflow": ["platform=tensorflow"],
}


def cpu() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), host.processor() or "unknown CPU")
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                    for f in line.split() if f in ("amx_bf16", "avx512_bf16")})
    return f"{model}, {os.cpu_count()} CPUs, bf16 flags: {', '.join(flags) or 'none'}"


def load() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, minutes: float) -> list[str]:
    """Wait (up to `minutes`) for the 1-minute load average to fall below max_load."""
    notes, deadline = [], time.monotonic() + minutes * 60
    while load() > max_load and time.monotonic() < deadline:
        print(f"load average {load():.2f} > {max_load}: waiting (until "
              f"{minutes:.0f} min have passed)", file=sys.stderr, flush=True)
        time.sleep(30)
    if load() > max_load:
        notes.append(f"the load average was still {load():.2f} (> {max_load}) when the benchmark "
                     "started: other processes shared the CPU, so its seconds are inflated and noisy")
    return notes


def one_run(net: str, label: str, seed: int, args, folder: Path) -> dict:
    """Train one config in its own process; its summary, peak resident set and wall time."""
    runs = folder / f"{net}-{label}-s{seed}"
    epochs = args.epochs or {"dense": 3, "conv": 2}[net]
    argv = [sys.executable, "-m", "mnistlab", "train", str(ROOT / "configs" / CONFIGS[net]),
            *PLATFORMS[label], "data.name=fashion-mnist", f"train.epochs={epochs}",
            f"train.seed={seed}", f"train.precision={args.precision}",
            f"train.threads={args.threads}", f"runs_dir={runs}", "--quiet"]
    if args.train_samples:
        argv.append(f"data.train_samples={args.train_samples}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = folder / f"{net}-{label}-s{seed}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    summaries = list(runs.glob("*/summary.json"))
    if proc.returncode or not summaries:
        raise SystemExit(f"{net} on {label} (seed {seed}) failed with exit code "
                         f"{proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
    s = json.loads(summaries[0].read_text())
    return {"net": net, "platform": label, "seed": seed, "epochs": s["epochs_completed"],
            "accuracy": s["final"]["test"]["accuracy"],
            "seconds_per_epoch": s["train_seconds"] / s["epochs_completed"],
            "params": s["params"], "peak_mb": usage.ru_maxrss / 1024, "wall_seconds": wall,
            "precision": s["precision"], "facts": s["platform"],
            "train_samples": s["train_samples"]}


def table(results: list[dict], nets: list[str], labels: list[str]) -> str:
    rows = ["| net | platform | test accuracy (median; each seed) | s per epoch | vs torch "
            "| parameters | peak memory MB | vs torch | whole run s |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for net in nets:
        base = {}
        for label in labels:
            mine = [r for r in results if r["net"] == net and r["platform"] == label]
            if not mine:
                continue
            acc = statistics.median(r["accuracy"] for r in mine)
            sec = statistics.median(r["seconds_per_epoch"] for r in mine)
            mem = statistics.median(r["peak_mb"] for r in mine)
            wall = statistics.median(r["wall_seconds"] for r in mine)
            if label == "torch":
                base = {"sec": sec, "mem": mem}
            ratio = (lambda v, k: f"{v / base[k]:.2f}x" if base else "")
            seeds = ", ".join(f"{r['accuracy']:.2%}" for r in sorted(mine, key=lambda r: r["seed"]))
            rows.append(f"| {net} | {label} | {acc:.2%} ({seeds}) | {sec:.2f} | {ratio(sec, 'sec')} "
                        f"| {mine[0]['params']:,} | {mem:.0f} | {ratio(mem, 'mem')} | {wall:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=0, help="both nets (default: dense 3, conv 2)")
    parser.add_argument("--train-samples", type=int, default=0, help="0: all (54,000 after the "
                        "validation split)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--nets", default="dense,conv")
    parser.add_argument("--platforms", default=",".join(PLATFORMS))
    parser.add_argument("--conv-backends", action="store_true",
                        help="also keras.backend=torch and jax on the conv net (slow)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="fp32 (default): this compares platforms, not precisions")
    parser.add_argument("--threads", type=int, default=0,
                        help="train.threads of every run (0: one per core)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--wait", type=float, default=15.0, help="minutes to wait for the load")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    nets, labels = args.nets.split(","), args.platforms.split(",")
    notes = wait_for_quiet(args.max_load, args.wait)
    start_load = os.getloadavg()
    print(cpu())
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in start_load)}", flush=True)
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(seeds):
            for net in nets:
                order = labels if i % 2 == 0 else labels[::-1]
                for label in order:
                    if net == "conv" and label in ("keras-torch", "keras-jax") and not args.conv_backends:
                        continue
                    r = one_run(net, label, seed, args, Path(tmp))
                    results.append(r)
                    print(f"  {net} {label} seed {seed}: {r['accuracy']:.2%}, "
                          f"{r['seconds_per_epoch']:.2f} s/epoch, {r['peak_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
    end_load = os.getloadavg()
    facts = {r["platform"]: r["facts"] for r in results}
    samples = sorted({r["train_samples"] for r in results})
    epochs = {net: sorted({r["epochs"] for r in results if r["net"] == net}) for net in nets}
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in end_load)}")
    print(f"Fashion-MNIST, {samples[0]:,} training images, epochs: "
          + ", ".join(f"{n} {'/'.join(map(str, e))}" for n, e in epochs.items())
          + f", seeds {args.seeds}, precision {args.precision}, threads {args.threads or 'one per core'}, "
          f"{time.perf_counter() - t0:.0f} s in all")
    print("versions: " + "; ".join(f"{k} {v['name']} {v['version']}" for k, v in facts.items()))
    if end_load[0] > args.max_load:
        notes.append(f"the load average was {end_load[0]:.2f} (> {args.max_load}) at the end")
    for note in notes:
        print(f"note: {note}")
    print()
    print(table(results, nets, labels))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "load_start": start_load,
                                         "load_end": end_load, "notes": notes,
                                         "runs": results}, indent=1))


if __name__ == "__main__":
    main()

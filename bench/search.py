"""How soon each search strategy reaches a configuration within 0.3 points of the full grid's best.

    python bench/search.py          # Fashion-MNIST: downloaded, or Debian's dataset-fashion-mnist
    python bench/search.py --budget 16 --seeds 0,1 --epochs 3

One search space of the dense net, 4 learning rates x 3 widths x 2 batch sizes x 2 optimizers
(48 points), trained on Fashion-MNIST with train.seed=0 and fp32 (so one configuration gives one
validation accuracy wherever and whenever it runs). Each strategy is the real `mnistlab sweep`
command with --jobs 1, one after the other on this machine:

- the full grid, with each trial a fresh Python (executor: local: warm: false, the start-up of
  mnistlab before warm trials) and with warm trials (the default);
- random search, TPE, and TPE with --prune, each warm, once per sampler seed (--seeds), with a
  budget of at most --budget trials (default 32 of the 48 points): the bench stops each search
  (Ctrl-C, as a user would) as soon as a trial reached the target, so its wall time is its time to
  the target, or its whole budget when it never got there.

The target is the full grid's best validation accuracy (the warm grid's, which trains the same
configurations as the cold one) minus 0.3 points. A strategy's time to the target is the time
from its command's start until the first trial that trained all its epochs with a validation
accuracy at or above the target ended (the time of its last record). Pruned trials, stopped at a
lower rung, do not count. The table gives each run, then the ratio to the cold grid's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from startup import compiled  # bench/startup.py

ROOT = Path(__file__).resolve().parent.parent

SPACE = {
    "optim.lr": [0.1, 0.01, 0.001, 0.0001],
    "model.hidden": [[64], [256], [1024]],
    "train.batch_size": [64, 256],
    "optim.name": ["sgd", "adamw"],
}


def write_specs(folder: Path, epochs: int, budget: int, seed: int) -> dict:
    overrides = ["data.name=fashion-mnist", f"train.epochs={epochs}",
                 "train.seed=0", "train.precision=fp32", f"runs_dir={folder / 'runs'}"]
    base = str(ROOT / "configs" / "dense.yaml")
    specs = {
        "grid-cold": {"base": base, "grid": SPACE, "overrides": overrides,
                      "executor": {"local": {"warm": False}}},
        "grid-warm": {"base": base, "grid": SPACE, "overrides": overrides},
        f"random-s{seed}": {"base": base, "random": {"n": budget, "seed": seed, **SPACE},
                            "overrides": overrides},
        f"tpe-s{seed}": {"base": base, "tpe": {"n": budget, "seed": seed, **SPACE},
                         "overrides": overrides},
    }
    paths = {}
    for name, spec in specs.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **spec}))
        paths[name] = path
    return paths


def full_trials(directory: Path, epochs: int) -> list[tuple[float, float]]:
    """(end time, final val accuracy) of each trial that trained all its epochs."""
    out = []
    for summary_path in directory.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed" or summary.get("epochs_completed") != epochs:
            continue
        records = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").open()]
        end = max(r["time"] for r in records if "time" in r)
        out.append((end, summary["final"]["val"]["accuracy"]))
    return sorted(out)


def run(label: str, spec: Path, epochs: int, prune: bool = False,
        target: float | None = None) -> dict:
    """The sweep command, to its end; with a target, stopped (Ctrl-C) once a trial reached it."""
    name = yaml.safe_load(spec.read_text())["name"] + ("-prune" if prune else "")
    directory = spec.parent / "runs" / name
    t0 = time.time()
    sweep = subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(spec), "--jobs", "1",
                              "--name", name, *(["--prune"] if prune else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = False
    while target is not None and sweep.poll() is None:
        time.sleep(0.5)
        if any(acc >= target - 1e-9 for _, acc in full_trials(directory, epochs)):
            reached = True
            sweep.send_signal(signal.SIGINT)  # the time to the target is known: stop the search
            break
    out = sweep.communicate()[0]
    wall = time.time() - t0
    if sweep.returncode != 0 and not (reached and sweep.returncode == 130):
        raise SystemExit(f"{label} failed:\n{out[-3000:]}")
    trials = full_trials(directory, epochs)
    summaries = [json.loads(p.read_text()) for p in directory.glob("*/summary.json")]
    training = sum(s.get("train_seconds") or 0 for s in summaries)
    return {"label": label, "t0": t0, "wall": wall, "trials": trials, "runs": len(summaries),
            "training": training, "stopped": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=32,
                        help="most trials of random and TPE search")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--margin", type=float, default=0.3, help="points below the grid's best")
    args = parser.parse_args()
    compiled(ROOT)  # the cold grid's trials run from bytecode, as an installed mnistlab does
    seeds = [int(s) for s in args.seeds.split(",")]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                    for f in line.split() if f in ("amx_bf16", "avx512_bf16", "avx2")})
    print(f"{cpu} ({' '.join(flags)}), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results, target = [], None
        for seed in seeds:
            paths = write_specs(folder, args.epochs, args.budget, seed)
            if seed == seeds[0]:
                results += [run("full grid, cold start", paths["grid-cold"], args.epochs),
                            run("full grid, warm", paths["grid-warm"], args.epochs)]
                best = max(acc for _, acc in results[1]["trials"])
                target = best - args.margin / 100
            results += [run(f"random, seed {seed}", paths[f"random-s{seed}"], args.epochs,
                            target=target),
                        run(f"TPE, seed {seed}", paths[f"tpe-s{seed}"], args.epochs,
                            target=target),
                        run(f"TPE + prune, seed {seed}", paths[f"tpe-s{seed}"], args.epochs,
                            prune=True, target=target)]
    cold = results[0]["wall"]
    print(f"\nfull grid's best val accuracy {best:.2%}; target {target:.2%}\n")
    print("| strategy | trials run | wall (s) | training share | time to target (s) | "
          "vs cold grid |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    reached_by = {}
    for r in results:
        hit = next((end - r["t0"] for end, acc in r["trials"] if acc >= target - 1e-9), None)
        if r["label"].startswith("full grid"):
            hit = r["wall"]  # a grid knows its best only once it has tried everything
        reached_by[r["label"]] = hit
        shown = f"{hit:.1f}" if hit is not None else "not reached"
        ratio = f"{hit / cold:.2f}" if hit is not None else "-"
        runs = f"{r['runs']}{', stopped at the target' if r['stopped'] else ''}"
        print(f"| {r['label']} | {runs} | {r['wall']:.1f} | {r['training'] / r['wall']:.0%} | "
              f"{shown} | {ratio} |", flush=True)
    for kind in ("random", "TPE", "TPE + prune"):
        times = [t for label, t in reached_by.items()
                 if label.startswith(kind + ", seed") and t is not None]
        if times:
            print(f"\n{kind}: median time to target {statistics.median(times):.1f} s, "
                  f"{statistics.median(times) / cold:.2f} of the cold grid's wall time "
                  f"({len(times)} of {len(seeds)} seeds reached it)", end="")
    print(f"\n\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

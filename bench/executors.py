"""Per-trial overhead of each sweep executor on this machine.

    python bench/executors.py                      # local, slurm and ray; 4 trials, 3 repeats
    python bench/executors.py --executors local,ray --trials 8

Each repeat runs N tiny trials (20 gradient steps of the quadratic task) one at a time through the
executor's own interface (submit, poll states, as the sweep runner does). The overhead of a trial is
(wall time of the N trials - the sum of their own wall_seconds) / N: what the engine adds, plus the
trial process's start (Python and PyTorch imports), which every executor pays. The median of the
repeats is shown. SLURM needs a cluster (scripts/slurm-local.sh starts one); Ray starts a local
instance, whose start-up is shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistlab.sweep.executors import TrialSpec, create_executor  # noqa: E402


def specs(directory: Path, n: int) -> list[TrialSpec]:
    out = []
    for i in range(n):
        run_dir = directory / f"t{i}"
        run_dir.mkdir(parents=True)
        argv = [sys.executable, "-m", "mnistlab", "train", "--quiet", "--run-dir", str(run_dir),
                str(ROOT / "configs" / "quadratic.yaml"), f"runs_dir={directory}", f"name=t{i}",
                "train.epochs=20"]
        out.append(TrialSpec(f"t{i}", f"t{i}", argv, run_dir, run_dir / "trial.log", 1, {}))
    return out


def one_repeat(executor, directory: Path, n: int) -> tuple[float, float]:
    """(overhead per trial, own seconds per trial) of n trials run one at a time."""
    todo = specs(directory, n)
    t0 = time.perf_counter()
    ids = executor.submit(todo)
    while not all(s == "finished" for s in executor.states(ids).values()):
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    own = 0.0
    for spec in todo:
        done = json.loads((spec.run_dir / "summary.json").read_text())
        if done.get("status") != "completed":
            raise SystemExit(f"{spec.run_dir}: trial did not complete; see {spec.log}")
        own += done["wall_seconds"]
    return (wall - own) / n, own / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", default="local,slurm,ray")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{args.trials} trials one at a time, {args.repeats} repeats, median\n")
    print("| executor | overhead per trial (s) | trial's own run (s) | engine start (s) |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.executors.split(","):
            t0 = time.perf_counter()
            executor = create_executor(name, {}, 1)
            start = time.perf_counter() - t0
            try:
                results = [one_repeat(executor, Path(tmp) / name / str(r), args.trials)
                           for r in range(args.repeats)]
            finally:
                executor.close()
            overhead = statistics.median(r[0] for r in results)
            own = statistics.median(r[1] for r in results)
            print(f"| {name} | {overhead:.2f} | {own:.2f} | {start:.1f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

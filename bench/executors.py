"""Per-trial overhead of each sweep executor on this machine, warm and cold, and the share of a
real sweep's wall time that trains.

    python bench/executors.py                      # local, slurm and ray; 4 trials, 3 repeats
    python bench/executors.py --executors local,ray --trials 8 --no-sweep
    python bench/executors.py --only-sweep --before f240f3e   # part 2 against an older revision

Part 1: each repeat runs N tiny trials (20 gradient steps of the quadratic task) one at a time
through the executor's own interface (submit, poll states, as the sweep runner does), with warm
trials (forked from a process that has imported torch and mnistlab, the default) and cold ones
(each a fresh Python: executor option warm: false); on SLURM, warm is one shared job of the N
trials (trials_per_job: N), cold a job per trial. The overhead of a trial is (wall time of the
N trials - the sum of their training seconds) / N: everything but training, from the engine's
scheduling to the trial's start-up, data and files. "Beyond its own run" leaves out what the
trial's own run records besides training (its start, data and final evaluation). The medians of
the repeats are shown. SLURM needs a cluster (scripts/slurm-local.sh starts one); Ray starts a
local instance, whose start-up is shown apart.

Part 2: `mnistlab sweep configs/sweep-dense.yaml data.name=fashion-mnist --jobs 1` (18 trials),
cold and warm, and the same with --prune: the share of the sweep's wall time that its trials
spend training, and the overhead per trial (per trial and rung with --prune). With --before, the
warm sweeps of that revision (exported with git archive) run too, each beside this checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistlab.sweep.executors import TrialSpec, create_executor  # noqa: E402
from startup import compiled, env, export  # noqa: E402  (bench/startup.py)


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


def one_repeat(executor, directory: Path, n: int) -> tuple[float, float, float]:
    """(overhead per trial, overhead beyond its own run, training seconds per trial) of n trials
    run one at a time."""
    todo = specs(directory, n)
    t0 = time.perf_counter()
    ids = executor.submit(todo)
    while not all(s == "finished" for s in executor.states(ids).values()):
        executor.wait(0.1)  # as the sweep runner does: sooner when a trial ends
    wall = time.perf_counter() - t0
    own = training = 0.0
    for spec in todo:
        done = json.loads((spec.run_dir / "summary.json").read_text())
        if done.get("status") != "completed":
            raise SystemExit(f"{spec.run_dir}: trial did not complete; see {spec.log}")
        own += done["wall_seconds"]
        training += done["train_seconds"]
    return (wall - training) / n, (wall - own) / n, training / n


def sweep_share(folder: Path, warm: bool, prune: bool,
                tree: Path = ROOT) -> tuple[float, float, float, int]:
    """(wall s, training share, overhead per trial run, trial runs) of sweep-dense.yaml, --jobs 1,
    with the mnistlab of a source tree (this checkout's by default)."""
    spec = yaml.safe_load((tree / "configs" / "sweep-dense.yaml").read_text())
    spec["base"] = str(tree / "configs" / spec["base"])
    spec["executor"] = {"local": {"warm": warm}}
    spec["overrides"] = spec.get("overrides", []) + ["data.name=fashion-mnist",
                                                     f"runs_dir={folder / 'runs'}"]
    name = f"dense-{'warm' if warm else 'cold'}{'-prune' if prune else ''}-{tree.name}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path), "--jobs", "1",
                           *(["--prune"] if prune else [])], cwd=tree, env=env(tree),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in (folder / "runs" / name).glob("*/summary.json")]
    training = sum(s["train_seconds"] for s in summaries)
    # a trial of a pruned sweep runs once per rung it reaches: each run is a start
    runs = sum(1 + len(s.get("resumes") or []) for s in summaries)
    return wall, training / wall, (wall - training) / runs, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", default="local,slurm,ray")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true", help="leave out part 2")
    parser.add_argument("--before", metavar="REVISION",
                        help="part 2 also runs the warm sweeps of this git revision, side by side")
    parser.add_argument("--only-sweep", action="store_true", help="leave out part 1")
    args = parser.parse_args()
    compiled(ROOT)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    if not args.only_sweep:
        print(f"{args.trials} trials one at a time, {args.repeats} repeats, median\n")
        print("| executor | trials | overhead per trial (s) | beyond its own run (s) | "
              "training per trial (s) | engine start (s) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.only_sweep else args.executors.split(","):
            for warm in (True, False):
                t0 = time.perf_counter()
                options = ({"trials_per_job": args.trials if warm else 1} if name == "slurm"
                           else {"warm": warm})
                executor = create_executor(name, options, 1)
                start = time.perf_counter() - t0
                try:
                    results = [one_repeat(executor, Path(tmp) / f"{name}-{warm}" / str(r),
                                          args.trials) for r in range(args.repeats)]
                finally:
                    executor.close()
                overhead, beyond, training = (statistics.median(r[i] for r in results)
                                              for i in range(3))
                how = "cold" if not warm else (f"warm, {args.trials} per job (trials_per_job)"
                                               if name == "slurm" else "warm")
                print(f"| {name} | {how} | {overhead:.2f} | {beyond:.2f} | "
                      f"{training:.2f} | {start:.1f} |", flush=True)
        if not args.no_sweep:
            print("\nsweep-dense.yaml on Fashion-MNIST, --jobs 1, local executor\n")
            print("| trials | sweep | wall (s) | training share | overhead per trial run (s) |")
            print("| --- | --- | ---: | ---: | ---: |")
            before = export(args.before, Path(tmp) / "before") if args.before else None
            cases = [(False, ROOT, "cold"), *([(True, before, f"warm, {args.before}")] if before else []),
                     (True, ROOT, "warm")]
            for prune in (False, True):
                for warm, tree, how in cases:
                    wall, share, overhead, runs = sweep_share(Path(tmp), warm, prune, tree)
                    print(f"| {how} | {'--prune, ' if prune else ''}{runs} "
                          f"trial runs | {wall:.1f} | {share:.0%} | {overhead:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

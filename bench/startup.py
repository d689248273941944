"""Fixed cost of a run: this checkout against an older revision, side by side.

    python bench/startup.py                    # against 8ddaedd (before the start-up savings), 5 runs
    python bench/startup.py --before HEAD~3 --runs 7

Three timings per source tree, each the median of --runs runs, the trees interleaved run by run
so that a change in the machine's load hits both alike:
- `python -c "import torch"`: the floor every command pays;
- `mnistlab train configs/quadratic.yaml`: wall time of the whole command (50 steps of gradient
  descent on x^2);
- `mnistlab train configs/cnn.yaml`: from the command to its first training step, seen as the first
  step record in metrics.jsonl (train.log_every=1), after which the process is killed.
The older revision is exported with `git archive` into a temporary directory. Run it on an otherwise
idle machine: it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = sorted({f for f in ("amx_bf16", "avx512_bf16") if f in text.split()})
    return f"{model}, {os.cpu_count()} cores, {' '.join(flags) or 'no amx_bf16/avx512_bf16'}"


def export(revision: str, directory: Path) -> Path:
    """The source tree of a git revision of this checkout, exported into directory."""
    directory.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return compiled(directory)


def compiled(tree: Path) -> Path:
    """The tree with its modules' bytecode written, as pip writes it for an installed package: no
    run pays the compilation, even where PYTHONDONTWRITEBYTECODE keeps Python from writing it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "mnistlab")], check=True)
    return tree


def env(tree: Path) -> dict:
    """The environment that runs a tree's mnistlab."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def timed(argv: list[str], tree: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=tree, env=env(tree), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def import_torch(tree: Path, scratch: Path) -> float:
    return timed([sys.executable, "-c", "import torch"], tree)


def quadratic(tree: Path, scratch: Path) -> float:
    run_dir = scratch / "quadratic"
    shutil.rmtree(run_dir, ignore_errors=True)
    return timed([sys.executable, "-m", "mnistlab", "train", "configs/quadratic.yaml",
                  f"runs_dir={scratch}", "--run-dir", str(run_dir), "--quiet"], tree)


def first_step(data: str):
    def measure(tree: Path, scratch: Path) -> float:
        run_dir = scratch / "cnn"
        shutil.rmtree(run_dir, ignore_errors=True)
        log = run_dir / "metrics.jsonl"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistlab", "train", "configs/cnn.yaml", f"data.name={data}",
             "train.log_every=1", f"runs_dir={scratch}", "--run-dir", str(run_dir), "--quiet"],
            cwd=tree, env=env(tree), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                if log.is_file() and any(json.loads(line).get("event") == "step"
                                         for line in log.read_text().splitlines() if line.strip()):
                    return time.perf_counter() - t0
                if proc.poll() is not None:
                    raise SystemExit(f"{tree}: cnn.yaml ended before its first step: "
                                     f"{proc.stderr.read()[-500:]}")
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="8ddaedd", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", default="fashion-mnist",
                        help="data.name for cnn.yaml (fashion-mnist works offline)")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        before = export(args.before, Path(tmp) / "before")
        trees = {f"before ({args.before})": before, "after (this checkout)": compiled(ROOT)}
        measures = {"import torch": import_torch, "quadratic.yaml, whole command": quadratic,
                    "cnn.yaml, command to first step": first_step(args.data)}
        times = {(t, m): [] for t in trees for m in measures}
        for i in range(args.runs + 1):  # the first round warms the caches and is not counted
            for m, measure in measures.items():
                for k, (t, tree) in enumerate(trees.items()):
                    scratch = Path(tmp) / f"runs-{k}"
                    scratch.mkdir(exist_ok=True)
                    seconds = measure(tree, scratch)
                    if i:
                        times[(t, m)].append(seconds)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"medians of {args.runs} runs, seconds (min-max):")
    names = list(trees)
    print(f"{'':34s}" + "".join(f"{n:>26s}" for n in names) + f"{'after/before':>14s}")
    for m in measures:
        cells = [times[(n, m)] for n in names]
        text = "".join(f"{statistics.median(c):>14.2f} ({min(c):.2f}-{max(c):.2f})" for c in cells)
        ratio = statistics.median(cells[1]) / statistics.median(cells[0])
        print(f"{m:34s}{text}{ratio:>14.2f}")
    for n in names:
        gap = statistics.median(times[(n, 'cnn.yaml, command to first step')]) - \
            statistics.median(times[(n, 'import torch')])
        print(f"{n}: cnn.yaml's first step comes {gap:.2f} s after import torch's time "
              "(goal: at most 1 s); quadratic.yaml "
              f"{statistics.median(times[(n, 'quadratic.yaml, whole command')]):.2f} s (goal: 2.5 s)")


if __name__ == "__main__":
    main()

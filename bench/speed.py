"""mnistlab against the PyTorch MNIST example on Fashion-MNIST, side by side in one process.

    python bench/speed.py                 # about 30 minutes on a 2-core AVX2 EPYC
    python bench/speed.py --repeats 3 --json results.json
    python bench/speed.py --profile-only  # a minute: the training step by operator

Measures, on the same machine in the same invocation:
- time to 90% test accuracy: the reference pipeline (bench/reference.py) against
  `configs/cnn.yaml train.epochs=2` run through mnistlab's own fit(), and against a one-epoch
  variant (`train.epochs=1 train.batch_size=64 optim.lr=0.1 train.val_split=0`); cumulative
  training seconds, evaluation excluded for both;
- the shipped configs' final test accuracy and training time (targets: cnn >= 92% in <= 60 s,
  dense >= 88% in <= 15 s);
- per-epoch cost of each speed choice (bf16, threads, a learned first conv, channels, kernel,
  batch size, batch norm, a stride-2 first conv) against the default, one epoch each, and whole
  runs that show whether the accuracy holds; the fp32/bf16 rows only where bf16 is native;
- a training step with max-pooling before the ReLU against the textbook order (same numbers);
- data preparation (index slice, copy, channels-last) as a share of a training step;
- from the command to the first training step, with the parsed-data cache cold and warm;
- the conv net's training FLOP/s as a share of the machine's fp32 matrix-multiply rate, and its
  training step by operator (torch.profiler), with the trained conv's forward and weight-gradient
  rates.
Medians over --repeats (seeds 0, 1, ...); ratios are taken pair by pair (same seed). The machine
should be otherwise idle: every figure is a wall-clock time.
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

import torch
from torch import nn

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from matmul import matmul_gflops  # noqa: E402
from reference import DEFAULT_DATA_DIR, run_reference  # noqa: E402

from mnistlab.config import load_config  # noqa: E402
from mnistlab.data import load_data  # noqa: E402
from mnistlab.evaluation import load_model  # noqa: E402
from mnistlab.models import activation_first  # noqa: E402
from mnistlab.compute import as_input, evaluate, is_conv  # noqa: E402
from mnistlab.precision import choose, cpu_bf16_flags, cpu_model, for_eval, measure_both  # noqa: E402
from mnistlab.tasks import TASKS, build_task  # noqa: E402
from mnistlab.run import Silent  # noqa: E402
from mnistlab.training import fit  # noqa: E402
from mnistlab.platforms.pytorch import setup, trained_part, training_inputs  # noqa: E402


class TestEachEpoch(Silent):
    """A reporter that evaluates last.pt on the test split after every epoch (outside the timing)."""

    def __init__(self):
        self.run_dir, self.epochs = None, []

    def start(self, info):
        self.run_dir = Path(info["run_dir"])

    def epoch(self, train, val):
        model, ckpt, cfg = load_model(self.run_dir / "checkpoints" / "last.pt")
        info = ckpt["data"]
        data = load_data(cfg.data, cfg.train.val_split, cfg.train.seed, (info["mean"], info["std"]))
        device = torch.device("cpu")
        bf16 = for_eval(cfg.train.precision, ckpt.get("precision"), is_conv(model))
        test = evaluate(model, TASKS["classify"], data.test_x, data.test_y, 1000, device, bf16=bf16)
        self.epochs.append({"epoch": train["epoch"], "train_seconds": train["elapsed"],
                            "test_accuracy": test["accuracy"]})


STRIDE_LABEL = "stride-2 first conv, no pooling after it"
# the textbook first conv, trained, as in cnn.yaml before the whitened one
LEARNED = ("model.first_conv=learned", "model.channels=[32,64]")
# one epoch of cnn.yaml with one setting changed: what each choice costs or saves
ABLATIONS = (("default (precision auto)", []), ("fp32", ["train.precision=fp32"]),
             ("bf16", ["train.precision=bf16"]), ("1 thread", ["train.threads=1"]),
             ("learned first conv, channels 32/64", list(LEARNED)),
             ("learned first conv, channels 16/64", ["model.first_conv=learned"]),
             ("18 whitened filters (all 9 directions)", ["model.channels=[18,64]"]),
             ("conv 2 with 32 channels", ["model.channels=[16,32]"]),
             ("5x5 kernels", ["model.kernel_size=5"]),
             ("batch 64", ["train.batch_size=64", "optim.lr=0.05"]),
             ("batch 128", ["train.batch_size=128", "optim.lr=0.1"]),
             ("batch norm", ["model.batch_norm=true"]),
             (STRIDE_LABEL, ["model.stride=[2,1]"]))
# the previous cnn.yaml: batch 128 at lr 0.1, all 9 whitened directions
PREVIOUS = ("train.batch_size=128", "optim.lr=0.1", "model.channels=[18,64]")
# the whole cnn.yaml run (seed 0) with one setting changed: does the accuracy hold?
FULL_RUNS = (("fp32", ["train.precision=fp32"]), ("bf16", ["train.precision=bf16"]),
             ("batch 128 at lr 0.1, 18 whitened filters (cnn.yaml before)", list(PREVIOUS)),
             ("18 whitened filters", ["model.channels=[18,64]"]),
             ("learned first conv 32/64", list(LEARNED)),
             ("no label smoothing", ["train.label_smoothing=0"]),
             ("stride-2 first conv", ["model.stride=[2,1]"]))
# where bf16 is emulated (no AMX, no AVX512-BF16) a bf16 epoch takes minutes and auto is fp32:
# --precision-only measures that; these rows are left out
PRECISION_ROWS = ("fp32", "bf16")
ONE_EPOCH = ("train.epochs=1", "train.batch_size=64", "optim.lr=0.1", "train.val_split=0")


def first_reaching(epochs: list[dict], threshold: float) -> float | None:
    return next((e["train_seconds"] for e in epochs if e["test_accuracy"] >= threshold), None)


def mnistlab_run(config: str, runs_dir: Path, data_dir: str, *overrides: str,
                 test_each_epoch: bool = False) -> tuple[dict, list]:
    cfg = load_config(ROOT / "configs" / config, [
        "data.name=fashion-mnist", f"data.root={data_dir}", f"runs_dir={runs_dir}", *overrides])
    reporter = TestEachEpoch() if test_each_epoch else Silent()
    summary = fit(cfg, reporter)
    return summary, getattr(reporter, "epochs", [])


def step_costs(data_dir: str, steps: int = 60) -> dict:
    """Seconds per batch of data preparation alone and of a whole training step (cnn.yaml)."""
    cfg = load_config(ROOT / "configs" / "cnn.yaml", ["data.name=fashion-mnist", f"data.root={data_dir}"])
    task = build_task(cfg)
    model, device = task.model, torch.device("cpu")
    channels_last = is_conv(model)
    model = model.to(memory_format=torch.channels_last)
    n = cfg.train.batch_size
    bf16 = choose(cfg.train.precision, device, model, as_input(task.data.train_x[:n], device, channels_last),
                  task.data.train_y[:n], task.loss).bf16
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = task.data.train_x, task.data.train_y
    perm = torch.randperm(len(x))
    batch = cfg.train.batch_size

    def prepare(i):
        idx = perm[i * batch:(i + 1) * batch]
        return as_input(x[idx], device, channels_last), y[idx]

    def step(i):
        xb, yb = prepare(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = task.loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(5):  # warm-up
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        prepare(i)
    prep = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    return {"prepare_s": prep, "step_s": (time.perf_counter() - t) / steps}


def pool_order_costs(data_dir: str, rounds: int = 7, steps: int = 5) -> dict:
    """Seconds per training step of cnn.yaml's model (max-pool, then ReLU on the smaller map)
    against the same weights in the textbook order (ReLU, then max-pool), interleaved."""
    cfg = load_config(ROOT / "configs" / "cnn.yaml", ["data.name=fashion-mnist", f"data.root={data_dir}",
                                                     "train.precision=fp32"])
    task = build_task(cfg)
    models = {"pool, then activation": task.model.to(memory_format=torch.channels_last)}
    models["activation, then pool"] = activation_first(models["pool, then activation"])
    n = cfg.train.batch_size
    xb = as_input(task.data.train_x[:n], torch.device("cpu"), True)
    yb = task.data.train_y[:n]
    times: dict[str, list[float]] = {label: [] for label in models}
    for r in range(rounds):
        for label, model in models.items():
            t = time.perf_counter()
            for _ in range(steps):
                model.zero_grad()
                task.loss(model(xb), yb).backward()
            if r:  # the first round warms up
                times[label].append((time.perf_counter() - t) / steps)
    return {label: median(t) for label, t in times.items()}


def forward_flops(module: nn.Module, output: torch.Tensor) -> int:
    """FLOPs of one conv or linear layer's forward pass that produced output."""
    if isinstance(module, nn.Conv2d):
        k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return 2 * output.numel() * k
    return 2 * module.in_features * module.out_features * output.shape[0]


def training_flops_per_image(model: nn.Module, image_shape) -> float:
    """FLOPs of the conv and linear layers for one image: the forward pass, the weight gradient of
    each layer that learns, and the input gradient of each layer that has a learning layer below
    it (none for the first conv; none for the second either when the first is whitened, frozen)."""
    flops = []
    learning_below = False

    def hook(module, inputs, output):
        nonlocal learning_below
        learns = module.weight.requires_grad
        flops.append(forward_flops(module, output) * (1 + learns + learning_below))
        learning_below = learning_below or learns

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *image_shape))
    for h in handles:
        h.remove()
    return sum(flops)


def time_to_first_step(data_dir: str, runs_dir: Path, cache: Path) -> float:
    """Seconds from launching 'mnistlab train' to the start of its first training step."""
    cmd = [sys.executable, "-m", "mnistlab", "train", str(ROOT / "configs" / "cnn.yaml"),
           "data.name=fashion-mnist", f"data.root={data_dir}", f"runs_dir={runs_dir}",
           "train.epochs=1", "train.log_every=1", "data.train_samples=1280", "-q"]
    before = set(runs_dir.glob("*"))
    launched = time.time()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    (run,) = set(runs_dir.glob("*")) - before
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return first["time"] - first["elapsed"] - launched


def op_profile(data_dir: str, steps: int = 30) -> dict:
    """Where cnn.yaml's training step spends its time, by operator (torch.profiler's self CPU time,
    ms per step), on the inputs the training loop feeds it (a whitened first stage run once)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = load_config(ROOT / "configs" / "cnn.yaml", ["data.name=fashion-mnist", f"data.root={data_dir}"])
    device, task, optimizer, _, chosen = setup(cfg)
    batch = cfg.train.batch_size
    x, body = training_inputs(task.model, task.data.train_x[:batch * (steps + 5)], batch, device,
                              chosen.bf16)
    y = task.data.train_y

    def step(i):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=chosen.bf16):
            loss = task.loss(body(as_input(x[i * batch:(i + 1) * batch], device, True)),
                             y[i * batch:(i + 1) * batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(5):
        step(i)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(5, steps + 5):
            step(i)
    wall = (time.perf_counter() - t) / steps
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()),
                 key=lambda kv: -kv[1])
    # the FLOPs of the convs the step runs (the run-once stage excluded), forward, per batch
    conv_flops = []
    hooks = [m.register_forward_hook(lambda m, i, o: conv_flops.append(forward_flops(m, o)))
             for m in body.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=chosen.bf16):
        body(as_input(x[:batch], device, True))  # as the step runs it (bf16 inputs where chosen)
    for h in hooks:
        h.remove()
    return {"step_ms": 1e3 * wall, "ops_ms": dict(ops[:8]), "conv_gflop_per_batch": sum(conv_flops) / 1e9}


def print_profile(prof: dict) -> None:
    total = sum(prof["ops_ms"].values())
    print(f"\n| cnn.yaml training step by operator (self CPU ms per step; the step: "
          f"{prof['step_ms']:.1f} ms under the profiler) | ms | share of these |\n|---|---|---|")
    for name, ms in prof["ops_ms"].items():
        print(f"| {name} | {ms:.2f} | {100 * ms / total:.0f}% |")
    flops, ops = prof["conv_gflop_per_batch"], prof["ops_ms"]
    if "aten::mkldnn_convolution" in ops and "aten::convolution_backward" in ops:
        print(f"- the trained convs: {flops:.2f} GFLOP per batch forward, the same again for their "
              f"weight gradient: forward at {flops / ops['aten::mkldnn_convolution'] * 1e3:.0f} "
              f"GFLOP/s, weight gradient at {flops / ops['aten::convolution_backward'] * 1e3:.0f} GFLOP/s")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(x, digits=1, unit=""):
    return "not reached" if x is None else f"{x:.{digits}f}{unit}"


def precision_only(args, out: dict) -> None:
    """fp32 against bf16 on cnn.yaml's own training step (what auto measures), then one epoch in auto.

    A whole epoch in the slower precision can take minutes where bf16 is emulated, so the two are
    compared step by step (the median of --repeats measurements of 3 steps each).
    """
    cfg = load_config(ROOT / "configs" / "cnn.yaml", ["data.name=fashion-mnist",
                                                      f"data.root={args.data_dir}"])
    task = build_task(cfg)
    model = task.model.to(memory_format=torch.channels_last)
    x = as_input(task.data.train_x[:cfg.train.batch_size], torch.device("cpu"), True)
    body, x = trained_part(model, x, len(task.data.train_x))  # the layers the steps train
    y = task.data.train_y[:cfg.train.batch_size]
    steps = [measure_both(body, x, y, task.loss) for _ in range(args.repeats)]
    step = {name: median([s[name] for s in steps]) for name in ("fp32", "bf16")}
    with tempfile.TemporaryDirectory() as tmp:
        s, _ = mnistlab_run("cnn.yaml", Path(tmp) / "runs", args.data_dir, "train.epochs=1")
    out["precision_only"] = {"step_seconds": steps, "auto_epoch": s}
    faster = min(step, key=step.get)
    print(f"""
| cnn.yaml training step, batch {cfg.train.batch_size} (median of {args.repeats}) | ms | vs the faster |
|---|---|---|
| fp32 | {1e3 * step['fp32']:.1f} | {step['fp32'] / step[faster]:.2f}x |
| bf16 | {1e3 * step['bf16']:.1f} | {step['bf16'] / step[faster]:.2f}x |

auto chose {s['precision']} ({'the faster' if s['precision'] == faster else 'NOT the faster'}): {s['precision_reason']}
one epoch of cnn.yaml in auto: {s['train_seconds']:.1f} s training, test accuracy {100 * s['final']['test']['accuracy']:.2f}%""")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="the four Fashion-MNIST IDX files")
    parser.add_argument("--repeats", type=int, default=2, help="seeds 0..N-1 for each pipeline")
    parser.add_argument("--ref-epochs", type=int, default=4,
                        help="at most this many reference epochs (it stops once it reaches 90%%)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the operator profile of cnn.yaml's training step (a minute)")
    parser.add_argument("--precision-only", action="store_true",
                        help="only one epoch of cnn.yaml in auto, fp32 and bf16, interleaved "
                             "(a few minutes): does auto pick the faster on this machine?")
    args = parser.parse_args()
    flags = cpu_bf16_flags()
    out: dict = {"machine": {"cpu": cpu_model(), "bf16_flags": flags, "cpus": os.cpu_count(),
                             "threads": torch.get_num_threads(), "torch": torch.__version__}}
    print(f"{cpu_model()} ({', '.join(flags) or 'no AMX, no AVX512-BF16'}), {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    out["matmul_gflops"] = matmul_gflops()
    # without native bf16 a 2048 bf16 matmul is emulated and takes minutes: measure a smaller one
    out["matmul_gflops_bf16"] = matmul_gflops(n=2048 if flags else 256, dtype=torch.bfloat16)
    print(f"matrix multiply: {out['matmul_gflops']:.0f} GFLOP/s fp32, "
          f"{out['matmul_gflops_bf16']:.0f} GFLOP/s bf16", flush=True)
    if args.precision_only:
        precision_only(args, out)
        return
    if args.profile_only:
        out["profile"] = op_profile(args.data_dir)
        print_profile(out["profile"])
        if args.json:
            args.json.write_text(json.dumps(out, indent=2, default=str))
        return

    cfg = load_config(ROOT / "configs" / "cnn.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = []
        for seed in range(args.repeats):
            ref = run_reference(args.data_dir, args.ref_epochs, seed, stop_at=0.90)
            print(f"reference seed {seed}: {ref}", flush=True)
            _, two = mnistlab_run("cnn.yaml", tmp / "runs", args.data_dir, f"train.seed={seed}",
                                  "train.epochs=2", test_each_epoch=True)
            print(f"mnistlab cnn, 2 epochs, seed {seed}: {two}", flush=True)
            _, one = mnistlab_run("cnn.yaml", tmp / "runs", args.data_dir, f"train.seed={seed}",
                                  *ONE_EPOCH, test_each_epoch=True)
            print(f"mnistlab cnn, 1-epoch variant, seed {seed}: {one}", flush=True)
            cnn, _ = mnistlab_run("cnn.yaml", tmp / "runs", args.data_dir, f"train.seed={seed}")
            dense, _ = mnistlab_run("dense.yaml", tmp / "runs", args.data_dir, f"train.seed={seed}")
            print(f"mnistlab cnn.yaml and dense.yaml, seed {seed}: test accuracy "
                  f"{cnn['final']['test']['accuracy']:.4f} in {cnn['train_seconds']:.1f} s, "
                  f"{dense['final']['test']['accuracy']:.4f} in {dense['train_seconds']:.1f} s", flush=True)
            pairs.append({"seed": seed, "reference": ref, "cnn_2_epochs": two, "cnn_1_epoch": one,
                          "cnn_summary": cnn, "dense_summary": dense})
        out["pairs"] = pairs

        def measurable(rows):
            return [(label, extra) for label, extra in rows if flags or label not in PRECISION_ROWS]

        ablation_list, full_list = measurable(ABLATIONS), measurable(FULL_RUNS)
        epochs = cfg.train.epochs
        full_list.append((f"{epochs - 1} epochs, not {epochs}", [f"train.epochs={epochs - 1}"]))
        if not flags:
            print("no native bf16: the fp32 and bf16 rows are left out (auto trains in fp32; "
                  "python bench/speed.py --precision-only compares the two)", flush=True)
        times = {label: [] for label, _ in ablation_list}
        for _ in range(args.repeats):  # interleaved, so that a noisy minute hits every setting
            for label, extra in ablation_list:
                s, _ = mnistlab_run("cnn.yaml", tmp / "runs", args.data_dir, "train.epochs=1", *extra)
                times[label].append(s["train_seconds"])
                print(f"cnn, one epoch, {label}: {s['train_seconds']:.1f} s", flush=True)
        ablations = {label: median(t) for label, t in times.items()}
        out["ablations"] = times
        full = {"default (precision auto)": pairs[0]["cnn_summary"]}
        for label, extra in full_list:
            full[label], _ = mnistlab_run("cnn.yaml", tmp / "runs", args.data_dir, *extra)
            print(f"cnn.yaml, {label}: test accuracy {full[label]['final']['test']['accuracy']:.4f} "
                  f"in {full[label]['train_seconds']:.1f} s", flush=True)
        out["full_runs"] = full

        out["step"] = step_costs(args.data_dir)
        out["pool_order"] = pool_order_costs(args.data_dir)
        out["profile"] = op_profile(args.data_dir)
        cache = tmp / "cache"
        out["first_step_cold"] = time_to_first_step(args.data_dir, tmp / "runs", cache)
        out["first_step_warm"] = median(
            [time_to_first_step(args.data_dir, tmp / "runs", cache) for _ in range(3)])

    model = build_task(load_config(ROOT / "configs" / "cnn.yaml", [
        "data.name=fashion-mnist", f"data.root={args.data_dir}"])).model
    flops = training_flops_per_image(model, (1, 28, 28))
    s0 = pairs[0]["cnn_summary"]
    achieved = flops * s0["train_samples"] * cfg.train.epochs / s0["train_seconds"] / 1e9
    out["flops"] = {"per_image_training": flops, "achieved_gflops": achieved}
    # the same net without its full-resolution first stage: how much of the gap that stage is
    stride_model = build_task(load_config(ROOT / "configs" / "cnn.yaml", [
        "data.name=fashion-mnist", f"data.root={args.data_dir}", "model.stride=[2,1]"])).model
    stride_flops = training_flops_per_image(stride_model, (1, 28, 28))
    stride_rate = stride_flops * s0["train_samples"] / ablations[STRIDE_LABEL] / 1e9

    ref90 = [first_reaching(p["reference"], 0.90) for p in pairs]
    two90 = [first_reaching(p["cnn_2_epochs"], 0.90) for p in pairs]
    one90 = [first_reaching(p["cnn_1_epoch"], 0.90) for p in pairs]
    one_acc = [p["cnn_1_epoch"][-1]["test_accuracy"] for p in pairs]

    def ratios(ours):
        return [r / m for r, m in zip(ref90, ours) if r is not None and m is not None]

    def ratio_cell(ours):
        rs = ratios(ours)
        return f"{fmt(median(rs))}x (pairs: {', '.join(f'{r:.1f}x' for r in rs) or 'none'})"

    cnn_acc = [p["cnn_summary"]["final"]["test"]["accuracy"] for p in pairs]
    cnn_s = [p["cnn_summary"]["train_seconds"] for p in pairs]
    cnn_wall = [p["cnn_summary"]["wall_seconds"] for p in pairs]
    dense_acc = [p["dense_summary"]["final"]["test"]["accuracy"] for p in pairs]
    dense_s = [p["dense_summary"]["train_seconds"] for p in pairs]
    dense_wall = [p["dense_summary"]["wall_seconds"] for p in pairs]
    ref_epoch = [p["reference"][0]["train_seconds"] for p in pairs]
    lab_epoch = [p["cnn_2_epochs"][0]["train_seconds"] for p in pairs]
    share = out["step"]["prepare_s"] / out["step"]["step_s"]
    s0_precision = pairs[0]["cnn_summary"].get("precision", "fp32")
    rate = out["matmul_gflops_bf16" if s0_precision == "bf16" else "matmul_gflops"]
    print(f"""
{out['machine']['cpu']} ({', '.join(flags) or 'no AMX, no AVX512-BF16'}); cnn.yaml trained in {s0_precision}: {pairs[0]['cnn_summary'].get('precision_reason', '')}
Fashion-MNIST, medians over {args.repeats} seeds (training seconds, evaluation excluded)

| measure | reference (PyTorch MNIST example) | mnistlab | ratio |
|---|---|---|---|
| seconds per epoch | {fmt(median(ref_epoch))} | {fmt(median(lab_epoch))} | {fmt(median([r / m for r, m in zip(ref_epoch, lab_epoch)]))}x |
| time to 90% test accuracy, `cnn.yaml train.epochs=2` | {fmt(median(ref90), unit=' s')} | {fmt(median(two90), unit=' s')} | {ratio_cell(two90)} |
| time to 90%, one-epoch variant (ends at {', '.join(f'{100 * a:.2f}%' for a in one_acc)}) | {fmt(median(ref90), unit=' s')} | {fmt(median(one90), unit=' s')} | {ratio_cell(one90)} |

| shipped config | test accuracy (min-max) | training s | whole run s | target |
|---|---|---|---|---|
| configs/cnn.yaml | {100 * median(cnn_acc):.2f}% ({100 * min(cnn_acc):.2f}-{100 * max(cnn_acc):.2f}) | {median(cnn_s):.1f} | {median(cnn_wall):.1f} | >= 92% in <= 60 s |
| configs/dense.yaml | {100 * median(dense_acc):.2f}% ({100 * min(dense_acc):.2f}-{100 * max(dense_acc):.2f}) | {median(dense_s):.1f} | {median(dense_wall):.1f} | >= 88% in <= 15 s |

| cnn.yaml, one epoch (median) | training s | vs default |
|---|---|---|
""" + "\n".join(f"| {k} | {v:.1f} | {v / ablations['default (precision auto)']:.2f}x |" for k, v in ablations.items()) + """

| cnn.yaml, whole run, seed 0 | test accuracy | training s (one run) |
|---|---|---|
""" + "\n".join(f"| {k} | {100 * v['final']['test']['accuracy']:.2f}% | {v['train_seconds']:.1f} |"
            for k, v in full.items()) + f"""

- data preparation: {1e3 * out['step']['prepare_s']:.2f} ms of a {1e3 * out['step']['step_s']:.1f} ms training step ({100 * share:.1f}%)
- max-pool before the ReLU: {1e3 * out['pool_order']['pool, then activation']:.1f} ms per fp32 training step against {1e3 * out['pool_order']['activation, then pool']:.1f} ms in the textbook order, the same numbers ({out['pool_order']['activation, then pool'] / out['pool_order']['pool, then activation']:.2f}x)
- command to first training step: {out['first_step_cold']:.2f} s with the parsed-data cache cold, {out['first_step_warm']:.2f} s warm (median of 3)
- conv net training: {flops / 1e6:.1f} MFLOP per image, {achieved:.0f} GFLOP/s achieved = {100 * achieved / rate:.0f}% of the {rate:.0f} GFLOP/s {s0_precision} matrix-multiply rate
- without the 28x28 first stage (stride-2 first conv, one epoch): {stride_flops / 1e6:.1f} MFLOP per image, {stride_rate:.0f} GFLOP/s = {100 * stride_rate / rate:.0f}% of that rate
""")
    print_profile(out["profile"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

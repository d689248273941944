"""The Keras, TensorFlow and JAX platforms: the same configs train into the same run directories.

Keras on TensorFlow, the TensorFlow loop and JAX train in this process (TensorFlow imported after
triton, as mnistlab always does); Keras's torch and jax backends, SIGTERM and the import orders
run in subprocesses. When CI is set, a missing framework fails these tests instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FASHION_DIR, tiny_config_dict
from typer.testing import CliRunner

from mnistlab.api import train
from mnistlab.cli import app
from mnistlab.errors import CheckpointError
from mnistlab.evaluation import evaluate_run
from mnistlab.platforms import frameworks, saved

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(autouse=True)
def frameworks_installed():
    gone = frameworks.missing(["keras", "tensorflow", "jax"])
    if gone:
        why = f"{', '.join(gone)} not installed (pip install -e \".[platforms]\")"
        if os.environ.get("CI"):
            pytest.fail(f"the platforms are required in CI: {why}")
        pytest.skip(why)


def config(tiny_data, tmp_path, **sections) -> dict:
    return tiny_config_dict(tiny_data, tmp_path / "runs", **sections)


def run_dir(summary: dict) -> Path:
    return Path(summary["run_dir"])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def shape(run: Path) -> set:
    """The record kinds and the names each carries."""
    return {(r["event"], r["split"], tuple(sorted(k for k in r if k != "eval_seconds")))
            for r in records(run)}


@pytest.fixture
def torch_run(tiny_data, tmp_path):
    return run_dir(train(config(tiny_data, tmp_path, train={"precision": "fp32"})))


@pytest.mark.parametrize("platform", ["keras", "tensorflow"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_keras_and_tensorflow_train_complete_run_directories(platform, kind, tiny_data, tmp_path,
                                                            torch_run):
    summary = train(config(tiny_data, tmp_path, platform=platform, model={"kind": kind},
                           train={"precision": "fp32"}))
    run = run_dir(summary)
    assert summary["status"] == "completed", summary["error"]
    assert summary["platform"]["name"] == platform and summary["platform"]["version"]
    assert summary["platform"]["backend"] == ("tensorflow" if platform == "keras" else None)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json",
                                               "env.json", "checkpoints"}
    if kind == "conv":  # the same record kinds and names as a torch run of the same config
        assert shape(run) == shape(torch_run)
        torch_summary = json.loads((torch_run / "summary.json").read_text())
        assert summary["params"] == torch_summary["params"]
    assert summary["final"]["test"]["accuracy"] > 0.9
    last = saved.load(run / "checkpoints" / "last.json")
    assert last["progress"]["epoch"] == 2 and last["platform"]["name"] == platform
    assert last["weights"].endswith(".keras" if platform == "keras" else ".npz")
    assert saved.load(run / "checkpoints" / "best.json")["weights_path"].is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".json")) \
        == sorted([last["weights"], saved.load(run / "checkpoints" / "best.json")["weights"]])
    if platform == "tensorflow":
        assert summary["graph"]["ops"] > 10 and "MatMul" in summary["graph"]["types"]


def test_quadratic_reaches_the_same_minimum_on_torch_tensorflow_and_jax(tmp_path):
    results = {}
    for platform in ("torch", "tensorflow", "jax"):
        summary = train(ROOT / "configs" / "quadratic.yaml",
                        [f"platform={platform}", f"runs_dir={tmp_path / 'runs'}", "train.epochs=20"])
        assert summary["status"] == "completed"
        results[platform] = summary["result"]
        steps = [r for r in records(run_dir(summary)) if r["event"] == "step"]
        assert len(steps) == 20 and steps[0]["grad_error"] < 1e-6 and steps[0]["x"] == [3.0, -2.0]
    for platform in ("tensorflow", "jax"):
        assert results[platform]["x"] == pytest.approx(results["torch"]["x"], rel=1e-5)
        assert results[platform]["f"] == pytest.approx(results["torch"]["f"], rel=1e-4)


@pytest.mark.parametrize("platform", ["tensorflow", "jax"])
def test_linear_regression_gets_close_to_least_squares(platform, tmp_path):
    summary = train(ROOT / "configs" / "linreg.yaml",
                    [f"platform={platform}", f"runs_dir={tmp_path / 'runs'}", "train.epochs=10"])
    assert summary["status"] == "completed"
    assert summary["result"]["lstsq_gap"] < 1e-4 and summary["result"]["A_max_error"] < 0.05


OPTIMS = {  # dense.yaml's, cnn.yaml's, and the other optimizers with a momentum to cycle
    "adamw": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
    "sgd-nesterov": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
                     "weight_decay": 0.0005},
    "rmsprop": {"name": "rmsprop", "lr": 0.001, "momentum": 0.5},
    "adam-l2": {"name": "adam", "lr": 0.01, "weight_decay": 0.001},
    "sgd-plain": {"name": "sgd", "lr": 0.1},
}


def optim_config(optim: dict, schedule: str, epochs: int = 3):
    from mnistlab.config import config_from_dict

    return config_from_dict({"optim": {**optim, "schedule": schedule}, "train": {"epochs": epochs}})


@pytest.mark.parametrize("name", ["adamw", "sgd-nesterov", "sgd-plain"])
def test_onecycle_lr_and_momentum_equal_pytorchs_step_by_step(name):
    import torch

    from mnistlab.platforms import keras as kerasplatform, loop, pytorch

    cfg = optim_config(OPTIMS[name], "onecycle", epochs=3)
    steps_per_epoch = 100  # 300 steps
    w = torch.nn.Parameter(torch.zeros(2))
    opt = pytorch.build_optimizer(cfg.optim, [w])
    sched = pytorch.build_scheduler(cfg.optim, opt, 3, steps_per_epoch)
    keras = frameworks.keras("tensorflow", 1)  # the threads of every in-process test
    ours = kerasplatform.optimizer(keras, cfg, steps_per_epoch)
    cycled = loop.cycles_momentum(cfg.optim)
    assert cycled == (name != "sgd-plain") and bool(getattr(ours, "cycle", None)) == cycled
    for step in range(301):
        group = opt.param_groups[0]
        momentum = group["betas"][0] if "betas" in group else group["momentum"]
        assert loop.lr_at(cfg, step, steps_per_epoch) == pytest.approx(group["lr"], abs=1e-12)
        lr = float(ours.learning_rate) if step == 0 else float(ours._learning_rate(step))
        assert lr == pytest.approx(group["lr"], abs=1e-7), step
        if cycled:
            assert float(ours.cycle(step)) == pytest.approx(momentum, abs=1e-7), step
        if step < 300:
            opt.step()
            sched.step()


@pytest.mark.parametrize("name", sorted(OPTIMS))
@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_keras_optimizers_follow_pytorchs_updates_under_each_schedule(name, schedule):
    """A least-squares fit stepped by PyTorch's optimizer and schedule, and by the Keras optimizer
    mnistlab builds for the same config (gradients from tf.GradientTape): the same weights."""
    import numpy as np
    import torch

    from mnistlab.platforms import keras as kerasplatform, pytorch

    tf = frameworks.tensorflow(1)
    keras = frameworks.keras("tensorflow", 1)  # the threads of every in-process test
    cfg = optim_config({**OPTIMS[name], "lr": OPTIMS[name]["lr"] / 10}, schedule, epochs=2)
    rng = np.random.default_rng(0)
    x, y, w0 = (rng.standard_normal(s).astype(np.float32) for s in ((32, 5), (32, 3), (5, 3)))
    w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = pytorch.build_optimizer(cfg.optim, [w])
    sched = pytorch.build_scheduler(cfg.optim, opt, 2, 30)
    v = tf.Variable(w0.copy())
    ours = kerasplatform.optimizer(keras, cfg, 30)
    for _ in range(60):
        loss = ((torch.from_numpy(x) @ w - torch.from_numpy(y)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((x @ v - y) ** 2)
        ours.apply_gradients([(tape.gradient(loss, v), v)])
    assert not np.allclose(w.detach().numpy(), w0, atol=1e-3)
    np.testing.assert_allclose(v.numpy(), w.detach().numpy(), rtol=2e-4, atol=2e-5)


def test_until_epoch_then_resume_equals_a_straight_keras_run(tiny_data, tmp_path):
    # onecycle: the lr and beta1 go on from the optimizer's step saved in the .keras file
    cfg = config(tiny_data, tmp_path, platform="keras", optim={"schedule": "onecycle"},
                 train={"epochs": 3, "precision": "fp32"})
    straight = train(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**cfg, "runs_dir": str(tmp_path / "split")}))
    paused = runner.invoke(app, ["train", str(path), "--until-epoch", "1", "-q"])
    assert paused.exit_code == 0, paused.output
    run = next((tmp_path / "split").iterdir())
    assert json.loads((run / "summary.json").read_text())["status"] == "paused"
    resumed = train(None, resume=run)
    assert resumed["status"] == "completed"
    assert resumed["final"] == straight["final"]
    assert [r["loss"] for r in records(run)] == [r["loss"] for r in records(run_dir(straight))]


def test_sigterm_marks_a_keras_run_interrupted_and_it_resumes(tiny_data, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path, platform="keras", model={"kind": "dense"},
                                          train={"epochs": 500, "log_every": 0})))
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", str(path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # the first epoch logged: stop it mid-run
        logs = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if logs and '"event": "epoch"' in logs[0].read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "mnistlab train --resume" in err and "Traceback" not in err
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["epochs_completed"] < 500
    done = summary["epochs_completed"]
    assert saved.load(run / "checkpoints" / "last.json")["progress"]["epoch"] == done
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--until-epoch", str(done + 1), "-q"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "paused" and summary["epochs_completed"] == done + 1


def test_eval_reproduces_a_keras_runs_test_accuracy_and_predict_works(tiny_data, tmp_path):
    summary = train(config(tiny_data, tmp_path, platform="keras"))  # precision auto: bf16 with AMX
    result = evaluate_run(run_dir(summary))
    assert result["accuracy"] == summary["final"]["test"]["accuracy"]
    assert result["loss"] == pytest.approx(summary["final"]["test"]["loss"], rel=1e-6)
    assert result["most_confused"] is not None and len(result["confusion"]) == 4
    from PIL import Image

    Image.new("L", (28, 28), 0).save(tmp_path / "blank.png")
    img = Image.new("L", (28, 28), 0)
    img.paste(255, (4, 8, 24, 12))
    img.save(tmp_path / "digit.png")
    out = runner.invoke(app, ["predict", str(run_dir(summary)), str(tmp_path / "digit.png")])
    assert out.exit_code == 0, out.output


def test_runs_compare_and_plot_read_a_mixed_set(tiny_data, tmp_path, torch_run):
    keras_run = run_dir(train(config(tiny_data, tmp_path, platform="keras")))
    listing = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--format", "json"])
    assert listing.exit_code == 0, listing.output
    assert {r["status"] for r in json.loads(listing.stdout)} == {"completed"}
    compared = runner.invoke(app, ["compare", str(torch_run), str(keras_run)])
    assert compared.exit_code == 0 and "keras" in compared.output, compared.output
    plotted = runner.invoke(app, ["plot", str(torch_run), str(keras_run), "-o", str(tmp_path / "c.png")])
    assert plotted.exit_code == 0 and (tmp_path / "c.png").is_file(), plotted.output
    confusion = runner.invoke(app, ["plot", str(keras_run), "--confusion", "-o", str(tmp_path / "m.png")])
    assert confusion.exit_code == 0, confusion.output


@pytest.mark.parametrize("overrides, words", [
    (["platform=keras", "task=quadratic"], ["task", "Keras", "platform=tensorflow"]),
    (["platform=jax", "task=quadratic", "optim.schedule=onecycle"], ["optim.schedule", "jax"]),
    (["platform=keras", "optim.name=manual"], ["optim.name", "Keras", "sgd"]),
    (["platform=tensorflow", "model.kind=module", "model.module=MODULE"], ["model.kind", "platform=torch"]),
    (["platform=jax"], ["platform", "keras.backend=jax"]),
    (["platform=jax", "task=linreg", "optim.name=adam"], ["optim.name", "jax"]),
])
def test_a_refused_setting_is_one_paragraph_and_exit_2(overrides, words, tiny_data, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path)))
    (tmp_path / "m.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    overrides = [o.replace("MODULE", f"{tmp_path / 'm.py'}:Net") for o in overrides]
    result = runner.invoke(app, ["train", str(path), *overrides])
    assert result.exit_code == 2, result.output
    assert all(w in result.stderr for w in words), result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_a_damaged_checkpoint_is_one_paragraph(tiny_data, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path, platform="keras")))
    assert runner.invoke(app, ["train", str(path), "--until-epoch", "1", "-q"]).exit_code == 0
    run = next((tmp_path / "runs").iterdir())
    folder = run / "checkpoints"
    weights = folder / saved.load(folder / "last.json")["weights"]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="sha256"):
        evaluate_run(run)
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 2 and "sha256" in result.stderr and "Traceback" not in result.output
    weights.write_bytes(data)
    ckpt = json.loads((folder / "last.json").read_text())
    ckpt["progress"]["epoch"] = 7  # edited
    (folder / "last.json").write_text(json.dumps(ckpt))
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 2 and "digest" in result.stderr and "Traceback" not in result.output
    (folder / "last.json").write_text("{\"format\": ")  # truncated
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 2 and "corrupt" in result.stderr


def test_a_missing_extra_names_the_install_command(tiny_data, tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path)))
    monkeypatch.setitem(sys.modules, "keras", None)
    result = runner.invoke(app, ["train", str(path), "platform=keras"])
    assert result.exit_code == 2 and 'pip install -e ".[keras]"' in result.stderr, result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
    monkeypatch.setitem(sys.modules, "jax", None)
    result = runner.invoke(app, ["train", str(path), "platform=jax", "task=quadratic"])
    assert result.exit_code == 2 and 'pip install -e ".[jax]"' in result.stderr, result.stderr


SCRIPT = """
import sys, yaml
from mnistlab.api import train
cfg = yaml.safe_load(open(sys.argv[1]))
for platform, backend, kind in {runs}:
    s = train({{**cfg, "platform": platform, "keras": {{"backend": backend}},
               "model": {{**cfg["model"], "kind": kind}}}})
    assert s["status"] == "completed", s
    print("trained", platform, backend, kind, s["final"]["test"]["accuracy"], flush=True)
"""


@pytest.mark.parametrize("runs", [
    # TensorFlow first, then torch, whose optimizer imports triton: the order that crashed
    [("tensorflow", "tensorflow", "dense"), ("torch", "tensorflow", "dense")],
    # Keras's torch backend (it imports torch._dynamo and triton), then a torch run
    [("keras", "torch", "conv"), ("keras", "torch", "dense"), ("torch", "torch", "dense")],
    [("keras", "jax", "conv"), ("keras", "jax", "dense")],
])
def test_the_import_orders_shipped_do_not_crash(runs, tiny_data, tmp_path):
    path = tmp_path / "c.yaml"
    # onecycle: mnistlab's Keras optimizers and schedule on each backend's own train step
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path, optim={"schedule": "onecycle"},
                                          train={"epochs": 1})))
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(runs=runs), str(path)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("trained")]) == len(runs)


def test_triton_comes_before_tensorflow_even_after_a_torch_run(tiny_data, tmp_path):
    """A torch run gives its optimizers a light stand-in for torch._dynamo that imports nothing;
    TensorFlow must still come after triton, or a later import of triton (torch.compile, say)
    kills the process."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_data, tmp_path, train={"epochs": 1})))
    runs = [("torch", "tensorflow", "dense"), ("tensorflow", "tensorflow", "dense")]
    script = SCRIPT.format(runs=runs) + "import triton\nprint('triton after both', flush=True)\n"
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "triton after both" in proc.stdout, proc.stderr[-3000:]


def test_the_tensorflow_loop_refuses_keras_loaded_on_another_backend(tiny_data, tmp_path):
    script = ("import keras, sys\nfrom mnistlab.cli import main\nsys.argv = ['mnistlab', 'train', "
              f"{str(tmp_path / 'c.yaml')!r}, 'platform=tensorflow']\nmain()")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tiny_data, tmp_path)))
    proc = subprocess.run([sys.executable, "-c", script], env={**ENV, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "backend" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_sweep_takes_platform_as_a_grid_axis(tiny_data, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(config(tiny_data, tmp_path, train={"epochs": 1})))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "platforms", "base": str(base),
                                    "grid": {"platform": ["torch", "tensorflow"]},
                                    "overrides": [f"runs_dir={tmp_path / 'sweeps'}"]}))
    result = runner.invoke(app, ["sweep", str(spec), "--jobs", "1"], env=ENV)
    assert result.exit_code == 0, result.output
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweeps").glob("platforms/*/summary.json")]
    assert sorted(s["platform"]["name"] for s in summaries) == ["tensorflow", "torch"]
    assert {s["status"] for s in summaries} == {"completed"}


@pytest.mark.realdata
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("platform, config_file", [
    ("keras", "dense.yaml"), ("tensorflow", "dense.yaml"), ("tensorflow", "cnn.yaml")])
def test_the_shipped_configs_train_as_written_on_fashion_mnist(platform, config_file, tmp_path):
    """The issue's commands, onecycle and cnn.yaml's whitened first conv included, on a tenth of
    the data for one epoch."""
    summary = train(ROOT / "configs" / config_file,
                    [f"platform={platform}", "data.name=fashion-mnist", "data.train_samples=6000",
                     "train.epochs=1", f"runs_dir={tmp_path / 'runs'}"])
    assert summary["status"] == "completed"
    assert summary["final"]["test"]["accuracy"] > 0.7  # torch: 77.5% (cnn.yaml), 22 steps


DOC = ROOT / "docs" / "platforms.md"


def doc_blocks(marker: str) -> list[tuple[str, list[str]]]:
    """(what follows the marker, the code block's lines) of each <!-- MARKER: ... --> in the doc."""
    lines, out = DOC.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(f"<!-- {marker}: "):
            start = i + 2  # the line after the marker opens the block
            end = lines.index("```", start)
            out.append((line[len(f"<!-- {marker}: "):-len(" -->")], lines[start:end]))
    return out


def test_the_docs_excerpts_are_lines_of_the_modules_in_order():
    blocks = doc_blocks("excerpt")
    assert {name for name, _ in blocks} >= {"mnistlab/models.py", "mnistlab/platforms/pytorch.py",
                                            "mnistlab/platforms/keras.py",
                                            "mnistlab/platforms/tensorflow.py",
                                            "mnistlab/platforms/jax.py"}
    for name, block in blocks:
        source = [line.strip() for line in (ROOT / name).read_text().splitlines()]
        at = 0
        for line in block:
            if line.strip() in ("", "..."):
                continue
            assert line.strip() in source[at:], f"docs/platforms.md: not in {name} (in order): {line}"
            at = source.index(line.strip(), at) + 1


def test_the_docs_tf1_snippet_runs_and_prints_177():
    [(_, snippet)] = doc_blocks("snippet")
    proc = subprocess.run([sys.executable, "-c", "\n".join(snippet)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["177"]

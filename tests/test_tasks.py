"""The course's first exercises: autograd, gradient descent on x^2, linear regression."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.config import load_config
from mnistlab.rundir import read_metrics
from mnistlab.tasks.linreg import line_equation
from mnistlab.training import fit

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def quadratic(tmp_path, *overrides):
    cfg = load_config(ROOT / "configs/quadratic.yaml", [f"runs_dir={tmp_path / 'runs'}", *overrides])
    summary = fit(cfg)
    return summary, [r for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
                     if r["event"] == "step"]


def test_quadratic_logs_x_f_and_an_autograd_gradient_equal_to_2x(tmp_path):
    summary, steps = quadratic(tmp_path, "quadratic.x0=[3.0, -2.0, 0.5]")
    assert len(steps) == 50
    assert steps[0]["x"] == [3.0, -2.0, 0.5] and steps[0]["loss"] == pytest.approx(13.25)
    for r in steps:
        assert r["grad"] == pytest.approx([2 * v for v in r["x"]])
        assert r["grad_error"] < 1e-6
    assert summary["status"] == "completed"
    assert summary["result"]["norm"] < 1e-3  # lr = 0.1: |x| shrinks by 0.8 a step


def test_hand_written_update_follows_the_same_trajectory_as_torch_sgd(tmp_path):
    _, torch_sgd = quadratic(tmp_path, "optim.lr=0.3")
    _, manual = quadratic(tmp_path, "optim.lr=0.3", "optim.name=manual")
    torch.testing.assert_close(torch.tensor([r["x"] for r in manual]),
                               torch.tensor([r["x"] for r in torch_sgd]))
    assert manual[1]["x"][0] == pytest.approx(3.0 * (1 - 2 * 0.3))


def test_lr_one_oscillates_between_x0_and_minus_x0(tmp_path):
    summary, steps = quadratic(tmp_path, "optim.lr=1.0", "train.epochs=6")
    assert [r["x"][0] for r in steps] == [3.0, -3.0, 3.0, -3.0, 3.0, -3.0]
    assert summary["status"] == "completed" and summary["result"]["f"] == 13.0


def test_lr_above_one_diverges_and_fails_with_a_clear_message(tmp_path):
    result = runner.invoke(app, ["train", str(ROOT / "configs/quadratic.yaml"), "optim.lr=1.5",
                                 f"runs_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 1
    assert "the run diverged" in result.stderr and "optim.lr=0.15" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "grew from 13" in summary["error"]


def test_noise_free_linreg_recovers_a_and_b_and_matches_least_squares(tmp_path):
    cfg = load_config(ROOT / "configs/linreg.yaml", ["linreg.noise=0", f"runs_dir={tmp_path / 'runs'}"])
    result = fit(cfg)["result"]
    assert result["A_max_error"] < 1e-3 and result["B_max_error"] < 1e-3
    assert abs(result["lstsq_gap"]) < 1e-6
    assert torch.tensor(result["A"]).shape == (3, 10) and len(result["B"]) == 3


def test_linreg_from_csv(tmp_path):
    xs = torch.linspace(-2, 2, 40)
    rows = "\n".join(f"{x:.6f},{3 * x - 1:.6f}" for x in xs.tolist())
    (tmp_path / "d.csv").write_text("height,weight\n" + rows + "\n")
    cfg = load_config(ROOT / "configs/linreg.yaml", [
        f"linreg.csv={tmp_path / 'd.csv'}", "linreg.x_columns=[height]", "linreg.y_columns=[weight]",
        "train.batch_size=8", "train.epochs=150", f"runs_dir={tmp_path / 'runs'}"])
    result = fit(cfg)["result"]
    assert result["A"][0][0] == pytest.approx(3.0, abs=1e-3)
    assert result["B"][0] == pytest.approx(-1.0, abs=1e-3)
    assert "A_max_error" not in result  # no true A and B for a file


def test_csv_with_a_wrong_column_name_is_a_clear_error(tmp_path):
    (tmp_path / "d.csv").write_text("height,weight\n1,2\n2,4\n3,6\n")
    result = runner.invoke(app, [
        "train", str(ROOT / "configs/linreg.yaml"), f"linreg.csv={tmp_path / 'd.csv'}",
        "linreg.x_columns=[heigth]", "linreg.y_columns=[weight]", f"runs_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 2
    assert "has no column 'heigth'" in result.stderr and "height, weight" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_plot_draws_quadratic_runs_on_log_scales_and_shows_coinciding_ones(tmp_path):
    from mnistlab import report

    for lr in ("0.1", "0.9", "1.5"):
        runner.invoke(app, ["train", str(ROOT / "configs/quadratic.yaml"), f"optim.lr={lr}",
                            "train.epochs=20", f"runs_dir={tmp_path / 'runs'}", "-q"])
    rows = [report.load_run(p) for p in sorted((tmp_path / "runs").iterdir())]
    fig = report.steps_figure(rows)
    ax_f, ax_x = fig.axes
    assert ax_f.get_yscale() == ax_x.get_yscale() == "log"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["optim.lr=0.1", "optim.lr=0.9", "optim.lr=1.5 (failed)"]
    slow, fast, diverging = (line for line in ax_f.lines if not line.get_label().startswith("_"))
    assert slow.get_ydata()[-1] < slow.get_ydata()[0] < diverging.get_ydata()[-1]
    # |1 - 2 lr| = 0.8 for both: lr=0.9 lies on lr=0.1, so it is drawn dashed with markers
    assert list(fast.get_ydata()) == pytest.approx(list(slow.get_ydata()), rel=1e-3)
    assert slow.get_linestyle() == "-" and fast.get_linestyle() == "--" and fast.get_marker() == "o"
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "optim.lr=0.9 (dashed) has the same f(x) and |x| as optim.lr=0.1" in notes
    assert "x changes sign at every step for optim.lr=0.9, optim.lr=1.5" in notes
    result = runner.invoke(app, ["plot", *map(str, (tmp_path / "runs").iterdir()),
                                 "-o", str(tmp_path / "q.png")])
    assert result.exit_code == 0 and (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_one_input_linreg_shows_the_data_and_the_fitted_line(tmp_path):
    from mnistlab import report

    cfg = load_config(ROOT / "configs/linreg.yaml", [
        "linreg.in_dim=1", "linreg.out_dim=1", "linreg.n=200", f"runs_dir={tmp_path / 'runs'}"])
    summary = fit(cfg)
    row = report.load_run(Path(summary["run_dir"]))
    ax_loss, ax_fit = report.curves_figure([row]).axes
    assert ax_loss.get_ylabel() == "mean squared error"
    assert len(ax_fit.collections[0].get_offsets()) == 160  # the training points
    fitted = ax_fit.lines[0]
    a, b = summary["result"]["A"][0][0], summary["result"]["B"][0]
    x0, x1 = fitted.get_xdata()
    assert list(fitted.get_ydata()) == pytest.approx([a * x0 + b, a * x1 + b])
    assert fitted.get_label() == f"fit {line_equation(a, b)}"
    assert ax_loss.get_yscale() == "log"  # the MSE falls by more than 30x to the noise floor


def test_line_equation_writes_a_negative_intercept_with_a_minus():

    assert line_equation(1.54, -0.291) == "y = 1.54x − 0.291"
    assert line_equation(-2, 0.5) == "y = -2x + 0.5"


def test_runs_table_shows_the_final_loss_of_runs_without_accuracy(tmp_path):
    for lr in ("0.1", "0.01"):
        runner.invoke(app, ["train", str(ROOT / "configs/quadratic.yaml"), f"optim.lr={lr}",
                            f"runs_dir={tmp_path / 'runs'}", "-q"])
    listing = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--format", "json"])
    rows = {r["optim.lr"]: r for r in json.loads(listing.stdout)}
    assert rows[0.01]["f"] == pytest.approx(13 * 0.98 ** 100, rel=1e-3)  # f after the last step
    assert rows[0.1]["f"] < 1e-6 and "test_accuracy" not in rows[0.1]


def test_quadratic_and_linreg_runs_speak_of_steps_and_samples_not_images(tmp_path):
    quad = runner.invoke(app, ["train", str(ROOT / "configs/quadratic.yaml"), "train.epochs=5",
                               f"runs_dir={tmp_path / 'runs'}"])
    assert quad.exit_code == 0, quad.output
    assert "img/s" not in quad.stdout and "validation samples" not in quad.stdout
    assert "minimising f(x) = sum(x^2) from x0 = [3.0, -2.0]" in quad.stdout
    last_epoch = [line for line in quad.stdout.splitlines() if line.startswith("epoch 5/5")][0]
    f_final = quad.stdout.split("f(x) = ")[-1].split(" at")[0]
    assert f"val loss {f_final} " in last_epoch and "steps/s" in last_epoch  # the same f(x)
    lin = runner.invoke(app, ["train", str(ROOT / "configs/linreg.yaml"), "train.epochs=1",
                              f"runs_dir={tmp_path / 'lin'}"])
    assert lin.exit_code == 0, lin.output
    assert "img/s" not in lin.stdout and "samples/s" in lin.stdout


def test_no_module_outside_the_tasks_names_a_task():
    import re

    for path in (ROOT / "mnistlab").glob("*.py"):
        if path.name in ("config.py",):  # the config declares the task choice and its sections
            continue
        text = path.read_text()
        assert not re.search(r"""task\S*\s*[!=]=\s*["'](classify|quadratic|linreg)""", text), path
        assert not re.search(r"""["'](classify|quadratic|linreg)["']\s*(in|==)""", text), path

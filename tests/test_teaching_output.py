"""What the first exercises show on screen: x, the gradient against 2x, A and B beside least squares."""

from pathlib import Path

from typer.testing import CliRunner

from mnistlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def train(tmp_path, config, *overrides):
    result = runner.invoke(app, ["train", str(ROOT / config), f"runs_dir={tmp_path / 'runs'}",
                                 *overrides], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    # only a line naming the run's directory (deep under pytest's tmp_path) may be longer
    assert all(len(line) <= 80 for line in result.stdout.splitlines()
               if str(tmp_path) not in line), result.stdout
    return result.stdout


def test_quadratic_shows_x_the_gradient_and_its_error_against_2x_each_epoch_and_at_the_end(tmp_path):
    out = train(tmp_path, "configs/quadratic.yaml", "train.epochs=2")
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("epoch 1/2")))
    assert lines[first + 1] == "  at x = [3, -2]: gradient [6, -4], max |gradient - 2x| 0"
    # after two steps of lr 0.1: x = 0.64 * x0, and the gradient at the final x is 2x
    assert "x = [1.92, -1.28], autograd's gradient [3.84, -2.56]" in out
    assert "max |gradient - 2x| = 0" in out


def test_a_long_x_is_abbreviated_within_80_columns(tmp_path):
    out = train(tmp_path, "configs/quadratic.yaml", "train.epochs=1",
                f"quadratic.x0=[{', '.join(str(i) for i in range(1, 41))}]")
    assert "at x = [1, 2, 3, " in out and ", ...]: gradient [2, 4, 6, " in out
    scalar = train(tmp_path, "configs/quadratic.yaml", "train.epochs=1", "quadratic.x0=5",
                   "train.log_every=0")
    assert "x = 4, autograd's gradient 8" in scalar  # one dimension: bare numbers


def test_linreg_shows_a_and_b_beside_least_squares(tmp_path):
    out = train(tmp_path, "configs/linreg.yaml", "linreg.in_dim=1", "linreg.out_dim=1",
                "train.epochs=40")
    assert "A 1.5" in out and ", least squares 1.54" in out
    assert "B -0.2" in out and ", least squares -0.291" in out
    wide = train(tmp_path, "configs/linreg.yaml", "train.epochs=1", "linreg.in_dim=50")
    line = next(line for line in wide.splitlines() if "A (3x50) [" in line)
    assert ", ...], least squares [" in line and line.endswith(", ...];")

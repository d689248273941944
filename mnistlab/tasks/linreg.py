"""Fit Y = AX + B with a linear layer, on synthetic data or a CSV file; compare with least squares."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, did_you_mean
from .base import Data, Task, fitted, flat, numbers

if TYPE_CHECKING:
    import torch

    from ..config import Config

MAX_VALUES = 200_000_000  # numbers of a synthetic data set: more than memory holds


class Linreg(Task):
    learns = "linear"
    name = "linreg"
    unread = ("model", "data", "quadratic", "train.label_smoothing")
    data_sections = ("linreg",)
    loss_label = "mean squared error"

    def __init__(self, cfg: Config, model_source=None, reference=None):  # its model is its own
        from torch import nn

        self.data, self.truth, self.source = linreg_data(cfg)
        in_dim, out_dim = self.data.train_x.shape[1], self.data.train_y.shape[1]
        self.model = nn.Linear(in_dim, out_dim)
        self.info = {"dataset": "linreg", "in_dim": in_dim, "out_dim": out_dim}

    @staticmethod
    def check(cfg):
        lin, split, problems = cfg.linreg, cfg.train.val_split, []
        if lin.csv:
            return problems
        if lin.n - round(lin.n * split) < 1:
            problems.append(f"linreg.n: {lin.n} samples with train.val_split={split:g} leave no "
                            "training sample; use more samples or a lower val_split")
        if lin.n * (lin.in_dim + lin.out_dim) > MAX_VALUES:
            problems.append(f"linreg.n: {lin.n} samples of {lin.in_dim} inputs and {lin.out_dim} "
                            f"outputs are more than {MAX_VALUES:,} numbers, more than "
                            "memory holds; use fewer samples or dimensions")
        return problems

    def result(self):
        import torch
        import torch.nn.functional as F

        lin = self.model.cpu()
        a, b = lin.weight.detach(), lin.bias.detach()
        x, y = self.data.train_x, self.data.train_y
        ones = torch.ones(len(x), 1)
        solution = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution  # [in + 1, out]
        with torch.no_grad():
            mse = F.mse_loss(lin(x), y).item()
        lstsq_mse = F.mse_loss(torch.cat([x, ones], 1) @ solution, y).item()
        out = {"A": a.tolist(), "B": b.tolist(), "train_mse": mse, "lstsq_train_mse": lstsq_mse,
               "lstsq_gap": mse - lstsq_mse,
               "lstsq_A": solution[:-1].T.tolist(), "lstsq_B": solution[-1].tolist()}
        if self.truth:
            out["A_max_error"] = float((a - self.truth["A"]).abs().max())
            out["B_max_error"] = float((b - self.truth["B"]).abs().max())
            out["true_A"] = self.truth["A"].tolist()
            out["true_B"] = self.truth["B"].tolist()
        if x.shape[1] == 1 and y.shape[1] == 1:  # what the report plots beside the fitted line
            out["train_points"] = {"x": x[:, 0].tolist(), "y": y[:, 0].tolist()}
        return out

    def describe(self):
        return super().describe() + f" ({self.source})"

    @staticmethod
    def draw_result(ax, rows, labels):
        """The data of 1-input regressions with their fitted lines (and the true ones)."""
        fits = fits_1d(rows)
        if fits:
            draw_fits(ax, rows, labels, fits)
        return bool(fits)

    @staticmethod
    def show_result(result):
        parts = [f"train MSE {result['train_mse']:.4g}, {result['lstsq_gap']:.2g} above least squares"]
        if "lstsq_A" in result:  # the fit beside least squares', rounded, the first numbers of each
            a, b = result["A"], result["B"]
            shape = f" ({len(a)}x{len(a[0])})" if len(flat(a)) > 1 else ""
            for name, mine, best, dim in (("A" + shape, a, result["lstsq_A"], len(flat(a))),
                                          ("B", b, result["lstsq_B"], len(b))):
                parts.append(fitted(lambda k, name=name, mine=mine, best=best:
                                    f"{name} {numbers(mine, k)}, least squares {numbers(best, k)}",
                                    dim, 76))
        if "A_max_error" in result:
            parts.append(f"max error of A {result['A_max_error']:.2g}, of B {result['B_max_error']:.2g}")
        return parts



def linreg_data(cfg: Config) -> tuple[Data, dict, str]:
    """Y = AX + B: synthetic (A, B drawn with the seed, Gaussian noise) or from a CSV file."""
    import torch

    from ..data import val_count

    lr = cfg.linreg
    g = torch.Generator().manual_seed(cfg.train.seed)
    truth = {}
    if lr.csv:
        x, y = read_csv(Path(lr.csv), lr.x_columns, lr.y_columns)
        source = lr.csv
    else:
        a = torch.randn(lr.out_dim, lr.in_dim, generator=g)
        b = torch.randn(lr.out_dim, generator=g)
        x = torch.randn(lr.n, lr.in_dim, generator=g)
        y = x @ a.T + b + lr.noise * torch.randn(lr.n, lr.out_dim, generator=g)
        truth = {"A": a, "B": b}
        source = f"synthetic: {lr.n} samples, {lr.in_dim} inputs, {lr.out_dim} outputs, noise {lr.noise:g}"
    n_val = val_count(len(x), cfg.train.val_split, source)
    perm = torch.randperm(len(x), generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return Data(x[train], y[train], x[val], y[val], x[:0], y[:0]), truth, source


def read_csv(path: Path, x_columns: list[str], y_columns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float columns of a UTF-8 CSV file with a header row; every row as long as the header."""
    import math

    import torch

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            table = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); set linreg.csv to the path "
                        "of a CSV file with a header row.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}); save it as CSV in UTF-8 (in a spreadsheet: 'CSV UTF-8').") from None
    except csv.Error as e:
        raise DataError(f"{path}: is not a readable CSV file ({e}); save it as plain CSV "
                        "with a header row.") from None
    table = [row for row in table if row]  # blank lines
    header, rows = (table[0], table[1:]) if table else ([], [])
    missing = [c for c in x_columns + y_columns if c not in header]
    twice = sorted({c for c in x_columns + y_columns if header.count(c) > 1})
    if not rows or missing or twice or not x_columns or not y_columns:
        hint = did_you_mean(missing[0], header) if missing else ""
        what = (f"has no column {', '.join(map(repr, missing))}{f' ({hint})' if hint else ''}"
                if missing else
                f"names the column {', '.join(map(repr, twice))} twice in its header" if twice else
                "needs linreg.x_columns and linreg.y_columns" if rows else "has no data rows")
        names = ", ".join(c if c.isprintable() else repr(c) for c in header)
        raise DataError(f"{path}: {what}; its columns are {names or 'none'}. Name the "
                        "input and output columns, e.g. linreg.x_columns=[x1,x2] linreg.y_columns=[y].")
    where = {c: header.index(c) for c in x_columns + y_columns}
    values = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {line} has {len(row)} values but the header names "
                            f"{len(header)} columns; every row needs one value per column.")
        try:
            numbers = {c: float(row[i]) for c, i in where.items()}
        except ValueError:
            bad = next(c for c, i in where.items() if not _is_number(row[i]))
            raise DataError(f"{path}: row {line}, column {bad!r}: {row[where[bad]]!r} is not a "
                            "number; every X and Y column must hold numbers.") from None
        bad = next((c for c, v in numbers.items() if not math.isfinite(v)), None)
        if bad is not None:
            raise DataError(f"{path}: row {line}, column {bad!r}: {row[where[bad]]!r} is not a "
                            "finite number; remove the row or give its value.")
        values.append(numbers)
    x = torch.tensor([[v[c] for c in x_columns] for v in values])
    y = torch.tensor([[v[c] for c in y_columns] for v in values])
    return x, y


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fits_1d(rows: list[dict]) -> dict[int, tuple]:
    """For each run that recorded its one-input training points (linreg): (x, y)."""
    out = {}
    for i, row in enumerate(rows):
        points = (row["summary"].get("result") or {}).get("train_points")
        if points:
            out[i] = (points["x"], points["y"])
    return out


def line_equation(a: float, b: float) -> str:
    """y = ax + b as written by hand: y = 1.54x − 0.291, never + -0.291."""
    return f"y = {a:.3g}x {'−' if b < 0 else '+'} {abs(b):.3g}"


def draw_fits(ax, rows: list[dict], labels: list[str], fits: dict[int, tuple]) -> None:
    """The data of 1-input linear regressions with their fitted lines (and the true ones)."""
    for i, (x, y) in fits.items():
        result, color = rows[i]["summary"]["result"], f"C{i % 10}"
        ax.scatter(x, y, s=6, alpha=0.35, color=color)
        ends = [min(x), max(x)]
        a, b = result["A"][0][0], result["B"][0]
        ax.plot(ends, [a * e + b for e in ends], color=color, lw=2,
                label=f"fit {line_equation(a, b)}" + (f" ({labels[i]})" if len(fits) > 1 else ""))
        if "true_A" in result:
            ta, tb = result["true_A"][0][0], result["true_B"][0]
            ax.plot(ends, [ta * e + tb for e in ends], "--", color="gray",
                    label=f"true {line_equation(ta, tb)}")
    ax.set(title="Data and fitted line", xlabel="x", ylabel="y")
    ax.legend(fontsize="small")

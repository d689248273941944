"""Fit Y = AX + B with a linear layer, on synthetic data or a CSV file; compare with least squares."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data import val_count
from ..errors import DataError
from .base import Data, Task


class Linreg(Task):
    learns = "linear"
    loss_label = "mean squared error"

    def __init__(self, cfg: Config, model_source=None):  # its model is its own
        self.data, self.truth, self.source = linreg_data(cfg)
        in_dim, out_dim = self.data.train_x.shape[1], self.data.train_y.shape[1]
        self.model = nn.Linear(in_dim, out_dim)
        self.info = {"dataset": "linreg", "in_dim": in_dim, "out_dim": out_dim}

    def result(self):
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
    def show_result(result):
        parts = [f"train MSE {result['train_mse']:.4g}, {result['lstsq_gap']:.2g} above least squares"]
        if "A_max_error" in result:
            parts.append(f"max error of A {result['A_max_error']:.2g}, of B {result['B_max_error']:.2g}")
        return parts



def linreg_data(cfg: Config) -> tuple[Data, dict, str]:
    """Y = AX + B: synthetic (A, B drawn with the seed, Gaussian noise) or from a CSV file."""
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
    """Float columns of a CSV file with a header row."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); set linreg.csv to the path "
                        "of a CSV file with a header row.") from None
    header = list(rows[0]) if rows else []
    missing = [c for c in x_columns + y_columns if c not in header]
    if not rows or missing or not x_columns or not y_columns:
        what = (f"has no column {', '.join(map(repr, missing))}" if missing else
                "needs linreg.x_columns and linreg.y_columns" if rows else "has no data rows")
        raise DataError(f"{path}: {what}; its columns are {', '.join(header) or 'none'}. Name the "
                        "input and output columns, e.g. linreg.x_columns=[x1,x2] linreg.y_columns=[y].")
    try:
        x = torch.tensor([[float(r[c]) for c in x_columns] for r in rows])
        y = torch.tensor([[float(r[c]) for c in y_columns] for r in rows])
    except ValueError as e:
        raise DataError(f"{path}: a value is not a number ({e}); every X and Y column must "
                        "hold numbers.") from None
    return x, y

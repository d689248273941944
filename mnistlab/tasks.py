"""What is learned: each task supplies its data, model, loss and final analysis to the one loop."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import Splits, load_data, val_count
from .errors import DataError
from .models import build_model


@dataclass
class Task:
    """Data, model and loss for the loop; classify says whether accuracy is a metric."""

    data: Splits
    model: nn.Module
    classify: bool
    info: dict  # saved in checkpoints: what eval and predict need to prepare inputs
    label_smoothing: float = 0.0
    truth: dict = field(default_factory=dict)  # linreg on synthetic data: the true A and B

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classify:
            return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        if isinstance(self.model, Quadratic):
            return out
        return F.mse_loss(out, y)


class Quadratic(nn.Module):
    """f(x) = sum(x^2) with x the only parameter; the input is ignored."""

    def __init__(self, x0: list[float]):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x0, dtype=torch.float32))

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return (self.x ** 2).sum()


def build_task(cfg: Config, model_source: Path | None = None) -> Task:
    if cfg.task == "classify":
        data = load_data(cfg.data, cfg.train.val_split, cfg.train.seed)
        model = build_model(cfg.model, data.image_shape, data.num_classes, model_source)
        info = {"dataset": cfg.data.name, "mean": data.mean, "std": data.std,
                "image_shape": list(data.image_shape), "num_classes": data.num_classes,
                "class_names": data.class_names}
        return Task(data, model, True, info, label_smoothing=cfg.train.label_smoothing)
    if cfg.task == "quadratic":
        one = torch.zeros(1, 1)  # a single dummy batch: one optimizer step per epoch
        empty = torch.zeros(0, 1)
        data = Splits(one, one, empty, empty, empty, empty, 0.0, 1.0, 0, [], "f(x) = sum(x^2)")
        return Task(data, Quadratic(cfg.quadratic.x0), False, {"dataset": "quadratic"})
    if cfg.task == "linreg":
        data, truth = linreg_data(cfg)
        in_dim, out_dim = data.train_x.shape[1], data.train_y.shape[1]
        info = {"dataset": "linreg", "in_dim": in_dim, "out_dim": out_dim}
        return Task(data, nn.Linear(in_dim, out_dim), False, info, truth=truth)
    raise ValueError(f"unknown task {cfg.task!r}")


def linreg_data(cfg: Config) -> tuple[Splits, dict]:
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
    empty_x, empty_y = x[:0], y[:0]
    data = Splits(x[train], y[train], x[val], y[val], empty_x, empty_y, 0.0, 1.0, 0, [], source)
    return data, truth


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


def final_result(cfg: Config, task: Task) -> dict | None:
    """The exercise's answer, written into summary.json at the end of a run."""
    if cfg.task == "quadratic":
        x = task.model.x.detach()
        return {"x": x.tolist(), "f": float((x ** 2).sum()), "norm": float(x.norm())}
    if cfg.task == "linreg":
        lin = task.model
        a, b = lin.weight.detach(), lin.bias.detach()
        x, y = task.data.train_x, task.data.train_y
        ones = torch.ones(len(x), 1)
        solution = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution  # [in + 1, out]
        with torch.no_grad():
            mse = F.mse_loss(lin(x), y).item()
        lstsq_mse = F.mse_loss(torch.cat([x, ones], 1) @ solution, y).item()
        out = {"A": a.tolist(), "B": b.tolist(), "train_mse": mse, "lstsq_train_mse": lstsq_mse,
               "lstsq_gap": mse - lstsq_mse,
               "lstsq_A": solution[:-1].T.tolist(), "lstsq_B": solution[-1].tolist()}
        if task.truth:
            out["A_max_error"] = float((a - task.truth["A"]).abs().max())
            out["B_max_error"] = float((b - task.truth["B"]).abs().max())
            out["true_A"] = task.truth["A"].tolist()
            out["true_B"] = task.truth["B"].tolist()
        return out
    return None


def step_extras(cfg: Config, task: Task) -> dict:
    """Per-step values worth logging besides the loss: x and its gradient for the quadratic."""
    if cfg.task != "quadratic":
        return {}
    x, grad = task.model.x.detach(), task.model.x.grad
    return {"x": x.tolist(), "grad": grad.tolist(),
            "grad_error": float((grad - 2 * x).abs().max())}  # autograd against the analytic 2x

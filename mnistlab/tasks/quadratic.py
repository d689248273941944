"""Minimise f(x) = sum(x^2) by gradient descent: the parameter is x, the input is ignored."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .base import Data, Task


class Parabola(nn.Module):
    """f(x) = sum(x^2) with x the only parameter; the input is ignored."""

    def __init__(self, x0: list[float]):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x0, dtype=torch.float32))

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return (self.x ** 2).sum()


class Quadratic(Task):
    learns = "point"
    metric = "f"
    rate_unit = "steps/s"
    loss_label = "f(x)"
    figure = "steps"

    def __init__(self, cfg: Config, model_source=None):  # its model is its own
        # one input per split: one gradient step per epoch, and the val "split" is f at the new x
        one = torch.zeros(1, 1)
        self.data = Data(train_x=one, train_y=one, val_x=one, val_y=one)
        self.model = Parabola(cfg.quadratic.x0)
        self.info = {"dataset": "quadratic"}
        self.x0 = cfg.quadratic.x0

    def loss(self, out, y):
        return out

    @staticmethod
    def eval_loss(out, y):
        return out.double() * len(y)

    def step_extras(self):
        x, grad = self.model.x.detach(), self.model.x.grad
        return {"x": x.tolist(), "grad": grad.tolist(),
                "grad_error": float((grad - 2 * x).abs().max())}  # autograd against the analytic 2x

    def result(self):
        x = self.model.x.detach().cpu()
        return {"x": x.tolist(), "f": float((x ** 2).sum()), "norm": float(x.norm())}

    def describe(self):
        return f"minimising f(x) = sum(x^2) from x0 = {self.x0}, one gradient step per epoch"

    @staticmethod
    def show_result(result):
        return [f"f(x) = {result['f']:.4g} at |x| = {result['norm']:.4g}"]

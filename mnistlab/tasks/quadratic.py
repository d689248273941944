"""Minimise f(x) = sum(x^2) by gradient descent: the parameter is x, the input is ignored."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .base import Data, Task, fitted, numbers

if TYPE_CHECKING:
    from ..config import Config

MAX_X0 = 1_000_000  # dimensions of the start point


def parabola(x0: list[float]):
    """f(x) = sum(x^2) as a module with x its only parameter; the input is ignored."""
    import torch
    from torch import nn

    class Parabola(nn.Module):
        def __init__(self):
            super().__init__()
            self.x = nn.Parameter(torch.tensor(x0, dtype=torch.float32))

        def forward(self, _: torch.Tensor) -> torch.Tensor:
            return (self.x ** 2).sum()

    return Parabola()


class Quadratic(Task):
    learns = "point"
    name = "quadratic"
    metric = "f"
    columns = ("f",)
    unread = ("model", "data", "linreg", "train.batch_size", "train.val_split",
              "train.label_smoothing")
    rate_unit = "steps/s"
    loss_label = "f(x)"
    figure = "steps"

    def __init__(self, cfg: Config, model_source=None, reference=None):  # its model is its own
        import torch

        # one input per split: one gradient step per epoch, and the val "split" is f at the new x
        one = torch.zeros(1, 1)
        self.data = Data(train_x=one, train_y=one, val_x=one, val_y=one)
        self.model = parabola(cfg.quadratic.x0)
        self.info = {"dataset": "quadratic"}
        self.x0 = cfg.quadratic.x0

    @staticmethod
    def check(cfg):
        x0 = cfg.quadratic.x0
        if not x0:
            return ["quadratic.x0: give the start point as a list, e.g. [3.0, -2.0]"]
        if len(x0) > MAX_X0:
            return [f"quadratic.x0: at most {MAX_X0:,} dimensions; got {len(x0):,}"]
        return []

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
        import torch

        x = self.model.x.detach().cpu().clone().requires_grad_()
        f = (x ** 2).sum()
        (grad,) = torch.autograd.grad(f, x)  # at the final x, against the analytic 2x
        x = x.detach()
        return {"x": x.tolist(), "f": float(f.detach()), "norm": float(x.norm()), "grad": grad.tolist(),
                "grad_error": float((grad - 2 * x).abs().max())}

    def describe(self):
        def text(x0):
            return f"minimising f(x) = sum(x^2) from x0 = {x0}, one gradient step per epoch"

        if len(text(self.x0)) <= 78:
            return text(self.x0)
        return fitted(lambda k: text(numbers(self.x0, k)), len(self.x0), 78)

    @staticmethod
    def show_result(result):
        parts = [f"f(x) = {result['f']:.4g} at |x| = {result['norm']:.4g}"]
        x = result["x"]
        if "grad" in result:  # runs of older versions recorded only x, f and |x|
            parts.append(fitted(lambda k: f"x = {numbers(x, k)}, autograd's gradient "
                                          f"{numbers(result['grad'], k)}", len(x), 76))
            parts.append(f"max |gradient - 2x| = {result['grad_error']:.2g}")
        else:
            parts.append(fitted(lambda k: f"x = {numbers(x, k)}", len(x), 76))
        return parts

    @staticmethod
    def show_step(record, width):
        """The step's x, autograd's gradient there and how far it is from the analytic 2x."""
        if "grad" not in record:
            return ""
        x, grad = record["x"], record["grad"]
        return fitted(lambda k: f"at x = {numbers(x, k)}: gradient {numbers(grad, k)}, "
                                f"max |gradient - 2x| {record['grad_error']:.2g}", len(x), width)

    @staticmethod
    def steps_figure(traces: list[tuple]):
        """f(x) and |x| against the gradient step, log scale: convergence, oscillation, divergence.

        traces: (row, label, steps, f, xs) of each run that logged its steps. Runs whose curves
        coincide are drawn dashed with markers over the first one and named in a note; a value
        that reaches exactly 0 (off a log axis) is marked at the bottom edge."""
        return _steps_figure(traces)


def _same_curve(a: list[float], b: list[float]) -> bool:
    """Equal to 0.1% at every step: one line on a log axis (float32 rounding differs by more than 1e-7)."""
    return len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-3, abs_tol=1e-30)
                                    for u, v in zip(a, b))


def _flips_sign(xs: list[list[float]]) -> bool:
    """Whether x points the other way after every step (lr above 0.5 for plain SGD)."""
    dots = [d for a, b in zip(xs, xs[1:]) if (d := sum(u * v for u, v in zip(a, b)))]
    return bool(dots) and all(d < 0 for d in dots)


QUADRATIC_STYLES = (("-", None), ("--", "o"), (":", "s"), ("-.", "^"))


def _steps_figure(traces: list[tuple]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=100, layout="constrained")
    ax_f, ax_x = fig.subplots(1, 2)
    notes = []
    for i, (row, label, steps, f, xs) in enumerate(traces):
        twins = [k for k in range(i) if steps == traces[k][2] and _same_curve(f, traces[k][3])]
        if twins:
            notes.append(f"{label} (dashed) has the same f(x) and |x| as {traces[twins[0]][1]}.")
        ls, marker = QUADRATIC_STYLES[min(len(twins), 3)]
        norms = [math.sqrt(sum(v * v for v in x)) for x in xs]
        if row["status"] != "completed":
            label += f" ({row['status']})"
        zero = next((s for s, v in zip(steps, f) if v == 0), None)
        if zero is not None:
            label += f" (f = 0 from step {zero})"
        color = f"C{i % 10}"
        for ax, ys in ((ax_f, f), (ax_x, norms)):
            ys = [v if v > 0 else math.nan for v in ys]
            ax.plot(steps, ys, ls=ls, marker=marker, markevery=max(len(steps) // 12, 1),
                    markersize=5, fillstyle="none", color=color, label=label if ax is ax_f else None)
            if zero is not None:  # 0 has no place on a log axis: a triangle on the bottom edge
                ax.plot([zero], [0], "v", color=color, markersize=9, clip_on=False,
                        transform=ax.get_xaxis_transform())
            if row["status"] == "failed":
                ax.plot(steps[-1:], ys[-1:], "X", color=color, markersize=8)
    ax_f.set(title="Loss", xlabel="gradient step", ylabel="f(x)", yscale="log")
    ax_x.set(title="Distance to the minimum", xlabel="gradient step", ylabel="|x|", yscale="log")
    for ax in (ax_f, ax_x):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(handles=[line for line in ax_f.lines if not line.get_label().startswith("_")],
               title="run (X: failed)" if any(t[0]["status"] == "failed" for t in traces) else "run",
               loc="outside right upper", fontsize="small")
    flips = [t[1] for t in traces if _flips_sign(t[4])]
    if flips:  # what |x| cannot show
        notes.append(f"x changes sign at every step for {', '.join(flips)}.")
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize="small", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.04 * len(notes) + 0.02, 1, 1 - 0.04 * len(notes) - 0.02))
    fig.suptitle("Gradient descent on f(x) = sum(x²)")
    return fig

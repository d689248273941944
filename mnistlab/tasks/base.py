"""The interface every task offers the loop, the display, the report and the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn


def _none() -> torch.Tensor:
    return torch.zeros(0, 1)


@dataclass
class Data:
    """Inputs and targets of each split; an empty split is skipped."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor = field(default_factory=_none)
    val_y: torch.Tensor = field(default_factory=_none)
    test_x: torch.Tensor = field(default_factory=_none)
    test_y: torch.Tensor = field(default_factory=_none)

    def to(self, device: torch.device) -> "Data":
        return Data(*(getattr(self, f.name).to(device) for f in fields(self)))


class Task:
    """Data, model and loss for the loop, and what the task shows and reports.

    A subclass sets data, model and info in __init__ and overrides what differs.
    """

    metric = "val_loss"  # the default metric a sweep ranks by (a name of sweep.METRICS)
    rate_unit = "samples/s"  # how training speed is shown
    loss_label = "loss"  # the y axis of learning curves
    has_classes = False  # eval and predict work on tasks with classes
    figure = "curves"  # curves: per epoch; steps: the logged steps (report.quadratic_figure)
    builds_model = False  # the config's model: section builds its network (model.kind=module too)
    # what a platform builds to learn it, in the platforms' words: network (the model: section's
    # net, cross-entropy), linear (Y = AX + B, mean squared error) or point (a vector x, f(x) its loss)
    learns = "linear"

    data: Data
    model: nn.Module
    info: dict  # saved in checkpoints: what eval and predict need to prepare inputs

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective, a mean over the batch."""
        return F.mse_loss(out, y)

    @staticmethod
    def eval_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The evaluation loss summed over the batch, in float64."""
        return F.mse_loss(out, y).double() * len(y)

    @staticmethod
    def batch_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch beside the loss, e.g. correct answers (divided by the count later)."""
        return {}

    def step_extras(self) -> dict:
        """Values logged with each step record besides loss and lr."""
        return {}

    def result(self) -> dict | None:
        """The exercise's answer, written into summary.json at the end of a run."""
        return None

    def describe(self) -> str:
        """What the run learns from, shown when it starts."""
        return f"{len(self.data.train_x)} training and {len(self.data.val_x)} validation samples"

    @staticmethod
    def show_result(result: dict) -> list[str]:
        """Parts of the final summary line that present the result."""
        return []

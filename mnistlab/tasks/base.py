"""The interface every task offers the loop, the display, the report and the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a task's class is read by light commands (runs, plot): torch is imported on use
    import torch
    from torch import nn

    from ..config import Config


def _none() -> torch.Tensor:
    import torch

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
    """Data, model and loss for the loop, and what the task shows, reports and checks.

    A subclass sets data, model and info in __init__ and overrides what differs; its class
    attributes and static methods are read without building it (and without importing torch).
    """

    name = ""  # its value of the config's task: setting
    metric = "val_loss"  # the default metric a sweep ranks by (a name of metrics.METRICS)
    columns: tuple[str, ...] = ("val_loss",)  # the metrics the runs table shows, headline first
    # config sections (or keys) it never reads: left out of the hash, the tables and --print-config
    unread: tuple[str, ...] = ()
    data_sections: tuple[str, ...] = ()  # the config sections that decide its data
    rate_unit = "samples/s"  # how training speed is shown
    loss_label = "loss"  # the y axis of learning curves
    has_classes = False  # eval and predict work on tasks with classes
    figure = "curves"  # curves: per epoch; steps: its own steps_figure of the logged steps
    builds_model = False  # the config's model: section builds its network (model.kind=module too)
    # what a platform builds to learn it, in the platforms' words: network (the model: section's
    # net, cross-entropy), linear (Y = AX + B, mean squared error) or point (a vector x, f(x) its loss)
    learns = "linear"

    data: Data
    model: nn.Module
    info: dict  # saved in checkpoints: what eval and predict need to prepare inputs

    @staticmethod
    def check(cfg: Config) -> list[str]:
        """Problems of a config of this task, each a sentence naming its key."""
        return []

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective, a mean over the batch."""
        import torch.nn.functional as F

        return F.mse_loss(out, y)

    @staticmethod
    def eval_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The evaluation loss summed over the batch, in float64."""
        import torch.nn.functional as F

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

    @staticmethod
    def show_step(record: dict, width: int) -> str:
        """A line under an epoch's line, within width, of what its last step record holds ('': none)."""
        return ""

    @staticmethod
    def curve_notes(rows: list[dict], labels: list[str]) -> list[str]:
        """Sentences under the learning curves of these runs that explain what they show."""
        return []

    @staticmethod
    def draw_result(ax, rows: list[dict], labels: list[str]) -> bool:
        """Beside the learning curves, what the runs' results show (False: nothing to draw)."""
        return False


def flat(values) -> list[float]:
    """A number, a list or a list of lists (row by row) as one list of numbers."""
    if isinstance(values, (list, tuple)):
        return [v for item in values for v in flat(item)]
    return [values]


def numbers(values, k: int | None = None) -> str:
    """Numbers to 3 significant digits, the first k of them and '...' for the rest; one number bare."""
    values = flat(values)
    k = len(values) if k is None else k
    if len(values) == 1:
        return f"{values[0]:.3g}"
    text = ", ".join(f"{v:.3g}" for v in values[:k])
    return f"[{text}{', ...' if k < len(values) else ''}]"


def fitted(render, n: int, width: int) -> str:
    """render(k) with the most numbers k (of n) per list that keeps it within width."""
    for k in range(n, 1, -1):
        text = render(k)
        if len(text) <= width:
            return text
    return render(1)

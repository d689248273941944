"""Classify images of the MNIST family: cross-entropy, accuracy, a confusion matrix at eval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Data, Task

if TYPE_CHECKING:
    from ..config import Config


class Classify(Task):
    learns = "network"
    name = "classify"
    metric = "val_accuracy"
    columns = ("test_accuracy", "val_accuracy", "best_val_accuracy")
    unread = ("quadratic", "linreg")
    data_sections = ("data",)
    rate_unit = "img/s"
    loss_label = "cross-entropy loss"
    has_classes = True
    builds_model = True

    def __init__(self, cfg: Config, model_source=None, reference=None):
        from ..data import load_data
        from ..models import build_model

        splits = load_data(cfg.data, cfg.train.val_split, cfg.train.seed)
        self.data = Data(splits.train_x, splits.train_y, splits.val_x, splits.val_y,
                         splits.test_x, splits.test_y)
        self.model = build_model(cfg.model, splits.image_shape, splits.num_classes, model_source,
                                 reference)
        self.info = {"dataset": cfg.data.name, "mean": splits.mean, "std": splits.std,
                     "image_shape": list(splits.image_shape), "num_classes": splits.num_classes,
                     "class_names": splits.class_names}
        self.source = splits.source
        self.label_smoothing = cfg.train.label_smoothing

    @staticmethod
    def check(cfg):
        if cfg.data.name == "idx" and not cfg.data.root:
            return ["data.root: data.name is idx (your own MNIST-format files), so data.root must "
                    "name the directory that holds them"]
        return []

    def loss(self, out, y):
        import torch.nn.functional as F

        return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)

    @staticmethod
    def eval_loss(out, y):
        import torch.nn.functional as F

        return F.cross_entropy(out, y, reduction="sum").double()

    @staticmethod
    def batch_metrics(out, y):
        return {"accuracy": (out.argmax(1) == y).sum()}

    def describe(self):
        return super().describe() + f" from {self.source}"

    @staticmethod
    def curve_notes(rows, labels):
        """Label smoothing: the training loss is against smoothed targets, the validation loss not."""
        smoothed = [(r["config"].get("train.label_smoothing"), label) for r, label in zip(rows, labels)
                    if r["config"].get("task", Classify.name) == Classify.name
                    and r["config"].get("train.label_smoothing")]
        if not smoothed:
            return []
        which = "" if len(smoothed) == len(rows) else f" in {len(smoothed)} of {len(rows)} runs" + (
            f" ({'; '.join(label for _, label in smoothed)})" if len(smoothed) <= 2 else "")
        values = sorted({v for v, _ in smoothed})
        return [f"Label smoothing {', '.join(f'{v:g}' for v in values)} is on{which}: the training "
                "loss is measured against the smoothed targets, so it sits above the validation "
                "loss (plain cross-entropy) even where the training accuracy is higher."]



"""Classify images of the MNIST family: cross-entropy, accuracy, a confusion matrix at eval."""

from __future__ import annotations

import torch.nn.functional as F

from ..config import Config
from ..data import load_data
from ..models import build_model
from .base import Data, Task


class Classify(Task):
    learns = "network"
    metric = "val_accuracy"
    rate_unit = "img/s"
    loss_label = "cross-entropy loss"
    has_classes = True
    builds_model = True

    def __init__(self, cfg: Config, model_source=None):
        splits = load_data(cfg.data, cfg.train.val_split, cfg.train.seed)
        self.data = Data(splits.train_x, splits.train_y, splits.val_x, splits.val_y,
                         splits.test_x, splits.test_y)
        self.model = build_model(cfg.model, splits.image_shape, splits.num_classes, model_source)
        self.info = {"dataset": cfg.data.name, "mean": splits.mean, "std": splits.std,
                     "image_shape": list(splits.image_shape), "num_classes": splits.num_classes,
                     "class_names": splits.class_names}
        self.source = splits.source
        self.label_smoothing = cfg.train.label_smoothing

    def loss(self, out, y):
        return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)

    @staticmethod
    def eval_loss(out, y):
        return F.cross_entropy(out, y, reduction="sum").double()

    @staticmethod
    def batch_metrics(out, y):
        return {"accuracy": (out.argmax(1) == y).sum()}

    def describe(self):
        return super().describe() + f" from {self.source}"



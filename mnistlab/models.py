"""The two networks of the course: dense (2 layers by default) and conv (2 conv + 1 dense)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int,
                model_source: Path | None = None) -> nn.Module:
    """Build the network for images of image_shape (C, H, W); model_source: a run's trusted copy."""
    if cfg.kind == "module":
        from .usermodel import build

        return build(cfg, image_shape, num_classes, model_source)
    channels, height, width = image_shape
    act = ACTIVATIONS[cfg.activation]
    if cfg.kind == "dense":
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for size in cfg.hidden:
            layers += [nn.Linear(width_in, size), act()]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width_in = size
        layers.append(nn.Linear(width_in, num_classes))
        return nn.Sequential(*layers)
    if cfg.kind == "conv":
        pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}[cfg.pool]
        layers = []
        c_in = channels
        for c_out in cfg.channels:
            layers.append(nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2,
                                    bias=not cfg.batch_norm))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(act())
            if pool is not None:
                layers.append(pool(2))
                height, width = height // 2, width // 2
            c_in = c_out
        if height < 1 or width < 1:
            raise ValueError(f"images of {image_shape} are too small for two pooling layers")
        layers.append(nn.Flatten())
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(c_in * height * width, num_classes))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""The two networks of the course: dense (2 layers by default) and conv (2 conv + 1 dense)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
MONOTONE = ("relu", "tanh", "sigmoid")  # non-decreasing: max(f(a), f(b)) == f(max(a, b))
MONOTONE_LAYERS = tuple(ACTIVATIONS[name] for name in MONOTONE)


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
        # max-pooling commutes with a non-decreasing activation: pool first, then activate the
        # 4x smaller map (forward and gradients unchanged; bench/speed.py times both orders)
        swap = cfg.pool == "max" and cfg.activation in MONOTONE
        for c_out, stride in zip(cfg.channels, cfg.stride):
            layers.append(nn.Conv2d(c_in, c_out, cfg.kernel_size, stride=stride,
                                    padding=cfg.kernel_size // 2, bias=not cfg.batch_norm))
            if stride > 1:  # the conv halved the image itself: no pooling after it
                height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            pooled = pool is not None and stride == 1
            if pooled and swap:  # the same values, a quarter of the activation work
                layers += [pool(2), act()]
            else:
                layers.append(act())
                if pooled:
                    layers.append(pool(2))
            if pooled:
                height, width = height // 2, width // 2
            c_in = c_out
        if height < 1 or width < 1:
            raise ValueError(f"images of {image_shape} are too small for the two conv layers, each halving them")
        layers.append(nn.Flatten())
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(c_in * height * width, num_classes))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def activation_first(model: nn.Sequential) -> nn.Sequential:
    """The same layers in the textbook order, activation then max-pooling: the same numbers as
    build_model's pool-then-activation, with the activation run on the 4x larger map."""
    layers = list(model)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.MaxPool2d) and isinstance(layers[i + 1], MONOTONE_LAYERS):
            layers[i], layers[i + 1] = layers[i + 1], layer
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

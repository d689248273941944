"""The two networks of the course: dense (2 layers by default) and conv (2 conv + 1 dense)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
MONOTONE = ("relu", "tanh", "sigmoid")  # non-decreasing: max(f(a), f(b)) == f(max(a, b))
MONOTONE_LAYERS = tuple(ACTIVATIONS[name] for name in MONOTONE)


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int,
                model_source: Path | None = None, reference: Path | None = None) -> nn.Module:
    """Build the network for images of image_shape (C, H, W); model_source: a run's trusted copy;
    reference: the run's copy, against which an edit of comments or whitespace only is accepted."""
    if cfg.kind == "module":
        from .usermodel import build

        return build(cfg, image_shape, num_classes, model_source, reference)
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
        for i, (c_out, stride) in enumerate(zip(cfg.channels, cfg.stride)):
            conv = WhitenedConv2d if i == 0 and cfg.first_conv == "whitened" else nn.Conv2d
            layers.append(conv(c_in, c_out, cfg.kernel_size, stride=stride,
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


class WhitenedConv2d(nn.Conv2d):
    """A first conv layer that is fitted, not learned: its filters whiten the training images'
    k x k patches (the patches' principal directions, each scaled to unit variance, the largest
    first), each filter beside its negative so that the activation after it keeps both signs.

    Fitted once before the first step and frozen: backpropagation stops at the second conv, which
    then computes no gradient for its input, and nothing runs backwards over the 28x28 map.
    """

    SCALE = 0.5  # outputs of standard deviation 0.5: 1 trained worse (91.22% against 91.72% after 3
    # epochs on Fashion-MNIST in a development run)
    EPS = 1e-2  # added to each variance: the flattest directions are not blown up into noise
    FIT_IMAGES = 10_000
    FIT_CHUNK = 500  # images: a chunk's patches take 28 MB in float64, a fraction of a second

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False):
        if c_out % 2 or c_out > 2 * c_in * kernel_size ** 2:
            raise ValueError(f"a whitened first conv has an even number of filters, at most "
                             f"{2 * c_in * kernel_size ** 2} for {kernel_size}x{kernel_size} "
                             f"patches of {c_in} channel(s); got {c_out}")
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, stage=None) -> None:
        """Set the filters from the patches of the first FIT_IMAGES images (N, C, H, W).

        The patches' covariance is summed over chunks of FIT_CHUNK images, telling stage(text,
        done, total) before each (it may raise to stop: a stop request is seen between chunks).
        """
        images = images[:self.FIT_IMAGES]
        shift = total = outer = None
        count = 0
        for i in range(0, len(images), self.FIT_CHUNK):
            if stage is not None:
                stage(FITTING, i, len(images))
            patches = F.unfold(images[i:i + self.FIT_CHUNK].double(), self.kernel_size,
                               padding=self.padding, stride=self.stride)
            patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
            if shift is None:  # sums about a first estimate of the mean keep their precision
                shift = patches.mean(0)
                total, outer = torch.zeros_like(shift), shift.new_zeros(len(shift), len(shift))
            patches -= shift
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        mean = total / count
        variances, directions = torch.linalg.eigh(outer / count - torch.outer(mean, mean))
        top = variances.argsort(descending=True)[:self.out_channels // 2]
        filters = directions[:, top].T / torch.sqrt(variances[top] + self.EPS)[:, None]
        weight = self.SCALE * torch.cat([filters, -filters])
        self.weight.copy_(weight.reshape(self.weight.shape))


FITTING = "fitting the whitened first convolution"


def fit_whitening(model: nn.Module, train_images: torch.Tensor, stage=None) -> None:
    """Fit the model's whitened conv layers (if any) to the training images; stage(text, done,
    total) is told how far each fit is (and may raise to stop it)."""
    for layer in model.modules():
        if isinstance(layer, WhitenedConv2d):
            layer.fit(train_images, stage)


def frozen_head(model: nn.Module) -> int:
    """How many leading layers of the model can run once for the whole training set: a fitted
    (whitened) first conv and the pooling and activation after it, up to the second conv. They
    learn nothing, draw no random numbers and act alike in training and evaluation. 0 when the
    model starts otherwise, or when anything else (batch norm, dropout) stands before conv 2."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[0], WhitenedConv2d):
        return 0
    for count, layer in enumerate(model[1:], start=1):
        if isinstance(layer, nn.Conv2d):
            return count
        if not isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, *ACTIVATIONS.values())):
            return 0
    return 0


def activation_first(model: nn.Sequential) -> nn.Sequential:
    """The same layers in the textbook order, activation then max-pooling: the same numbers as
    build_model's pool-then-activation, with the activation run on the 4x larger map."""
    layers = list(model)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.MaxPool2d) and isinstance(layers[i + 1], MONOTONE_LAYERS):
            layers[i], layers[i + 1] = layers[i + 1], layer
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module, learned_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not learned_only)

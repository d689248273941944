"""Model output shapes and parameter counts, computed by hand."""

import pytest
import torch

from mnistlab.config import ModelConfig
from mnistlab.models import (WhitenedConv2d, activation_first, build_model, count_parameters,
                             fit_whitening, frozen_head)


def test_dense_default_is_two_layers_with_the_expected_parameters():
    model = build_model(ModelConfig(kind="dense", hidden=[256]), (1, 28, 28), 10)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2
    assert count_parameters(model) == (784 * 256 + 256) + (256 * 10 + 10)


def test_dense_hidden_sizes_and_dropout():
    model = build_model(ModelConfig(kind="dense", hidden=[64, 32], dropout=0.5, activation="tanh"),
                        (1, 12, 12), 4)
    assert model(torch.zeros(3, 1, 12, 12)).shape == (3, 4)
    assert count_parameters(model) == (144 * 64 + 64) + (64 * 32 + 32) + (32 * 4 + 4)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2


def test_conv_is_two_conv_layers_and_one_dense_layer():
    cfg = ModelConfig(kind="conv", channels=[32, 64], kernel_size=5, batch_norm=True)
    model = build_model(cfg, (1, 28, 28), 10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 1
    expected = (1 * 32 * 25) + 2 * 32 + (32 * 64 * 25) + 2 * 64 + (64 * 7 * 7 * 10 + 10)
    assert count_parameters(model) == expected


def test_conv_without_pooling_or_batch_norm_keeps_image_size():
    cfg = ModelConfig(kind="conv", channels=[4, 8], kernel_size=3, pool="none", batch_norm=False)
    model = build_model(cfg, (1, 10, 10), 3)
    assert model(torch.zeros(1, 1, 10, 10)).shape == (1, 3)
    assert count_parameters(model) == (9 * 4 + 4) + (4 * 8 * 9 + 8) + (8 * 100 * 3 + 3)


def test_max_pool_before_a_monotone_activation_gives_the_same_values_and_gradients():
    """The conv net pools before activating (cheaper); the textbook order must give identical numbers."""
    for activation in ("relu", "tanh", "sigmoid"):
        torch.manual_seed(0)
        cfg = ModelConfig(kind="conv", channels=[4, 8], activation=activation, batch_norm=False)
        model = build_model(cfg, (1, 12, 12), 3)
        layers = list(model)
        kinds = [type(m).__name__ for m in layers]
        assert kinds[:3] == ["Conv2d", "MaxPool2d", {"relu": "ReLU", "tanh": "Tanh",
                                                      "sigmoid": "Sigmoid"}[activation]]
        textbook = activation_first(model)
        assert [type(m).__name__ for m in textbook][1:3] == kinds[1:3][::-1]
        x = torch.randn(6, 1, 12, 12)
        out = model(x)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = textbook(x)
        ref.square().sum().backward()
        if activation == "sigmoid":  # AVX-512's vector sigmoid and its scalar tail differ in the
            # last bit, so on such CPUs the two orders agree to float32 rounding, not bit for bit
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
            for g, p in zip(grads, model.parameters()):
                torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
            continue
        assert torch.equal(out, ref)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_gelu_is_not_monotone_so_it_activates_before_pooling():
    model = build_model(ModelConfig(kind="conv", channels=[4, 8], activation="gelu"), (1, 12, 12), 3)
    kinds = [type(m).__name__ for m in model]
    assert kinds.index("GELU") < kinds.index("MaxPool2d")


def test_a_stride_two_conv_halves_the_image_itself_and_is_not_pooled():
    cfg = ModelConfig(kind="conv", channels=[32, 64], stride=[2, 1], batch_norm=False)
    model = build_model(cfg, (1, 28, 28), 10)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Linear"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # 28 -> 14 by the stride, -> 7 by the one pooling: 7 * 7 * 64 inputs to the dense layer
    assert count_parameters(model) == (9 * 32 + 32) + (32 * 64 * 9 + 64) + (64 * 7 * 7 * 10 + 10)
    odd = build_model(ModelConfig(kind="conv", channels=[4, 8], stride=[2, 2], pool="none"), (1, 9, 9), 3)
    assert odd(torch.zeros(1, 1, 9, 9)).shape == (1, 3)  # 9 -> 5 -> 3


def test_a_whitened_first_conv_decorrelates_the_patches_it_was_fitted_to():
    torch.manual_seed(0)
    # images with strongly correlated neighbouring pixels, of a variance that dwarfs EPS
    noise = torch.randn(200, 1, 10, 10)
    images = 10 * torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
    cfg = ModelConfig(kind="conv", channels=[18, 8], first_conv="whitened", batch_norm=False)
    model = build_model(cfg, (1, 10, 10), 3)
    conv = model[0]
    assert isinstance(conv, WhitenedConv2d) and conv.bias is None
    fit_whitening(model, images)
    out = conv(images).detach().permute(0, 2, 3, 1).reshape(-1, 18).double()
    half = out[:, :9]
    cov = torch.cov(half.T)
    # unit variance at SCALE (up to the EPS added to each variance), and no correlation left
    scale = WhitenedConv2d.SCALE ** 2
    assert torch.allclose(cov.diagonal(), torch.full((9,), scale, dtype=torch.double), rtol=0.05)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 1e-6
    assert torch.equal(out[:, 9:], -half)  # each filter beside its negative


def test_a_whitened_first_conv_keeps_the_largest_directions_and_is_never_trained():
    torch.manual_seed(0)
    images = 10 * torch.nn.functional.avg_pool2d(torch.randn(100, 1, 10, 10), 3, stride=1, padding=1)
    cfg = ModelConfig(kind="conv", channels=[4, 8], first_conv="whitened", batch_norm=False)
    model = build_model(cfg, (1, 10, 10), 3)
    fit_whitening(model, images)
    # 4 filters: the 2 directions of largest variance; the smoothest (all-positive) one is first
    first = model[0].weight[0].flatten()
    assert (first > 0).all() or (first < 0).all()
    assert count_parameters(model) - count_parameters(model, learned_only=True) == 4 * 9
    before = model[0].weight.clone()
    model(images[:8]).square().sum().backward()
    assert model[0].weight.grad is None and model[3].weight.grad is not None
    assert torch.equal(model[0].weight, before)


def test_a_whitened_first_conv_needs_an_even_number_of_filters_it_can_make():
    for channels in (3, 20):
        with pytest.raises(ValueError, match="even number"):
            WhitenedConv2d(1, channels, 3)


def test_only_a_whole_fitted_first_stage_is_a_frozen_head():
    def head(**settings):
        return frozen_head(build_model(ModelConfig(kind="conv", channels=[4, 8], batch_norm=False,
                                                   **settings), (1, 12, 12), 3))

    assert head(first_conv="whitened") == 3  # conv, max-pool, ReLU
    assert head(first_conv="whitened", stride=[2, 1]) == 2  # conv, ReLU
    assert head(first_conv="whitened", activation="gelu") == 3  # conv, GELU, max-pool
    assert head(first_conv="learned") == 0
    assert head(first_conv="whitened", dropout=0.5) == 3  # the dropout stands before the dense layer
    with_bn = build_model(ModelConfig(kind="conv", channels=[4, 8], first_conv="whitened"), (1, 12, 12), 3)
    assert frozen_head(with_bn) == 0  # batch norm learns: the first stage is not fixed

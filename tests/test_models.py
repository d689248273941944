"""Model output shapes and parameter counts, computed by hand."""

import torch

from mnistlab.config import ModelConfig
from mnistlab.models import activation_first, build_model, count_parameters


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

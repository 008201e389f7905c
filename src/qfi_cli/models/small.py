"""Small models: a CNN for 8x8 digits (the default) and LeNet-5 for 28x28 MNIST / Fashion-MNIST.

Layers have names (``conv1``, ``fc``...), so that fault patterns such as ``fault.layers=[conv*]`` mean something.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from qfi_cli.models.norm import norm_layer
from qfi_cli.models.registry import register_model


class DigitsCNN(nn.Sequential):
    """Three 3x3 conv-norm-ReLU blocks and a linear classifier; about 25k weights, for 8x8 inputs.

    >>> [n for n, m in DigitsCNN().named_children() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ['conv1', 'conv2', 'conv3', 'fc']
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, norm: str = "batch") -> None:
        w = width
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, w, 3, padding=1, bias=False)), ("norm1", norm_layer(norm, w)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)), ("norm2", norm_layer(norm, 2 * w)),
            ("relu2", nn.ReLU(inplace=True)), ("pool", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)), ("norm3", norm_layer(norm, 4 * w)),
            ("relu3", nn.ReLU(inplace=True)), ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("fc", nn.Linear(4 * w, num_classes)),
        ]))


@register_model("digits_cnn", input_size=8)
def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16, norm: str = "batch") -> nn.Module:
    return DigitsCNN(num_classes, in_channels, width, norm)


class LeNet5(nn.Sequential):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 6, 5, padding=2)), ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU(inplace=True)), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(16 * 5 * 5, 120)), ("relu3", nn.ReLU(inplace=True)),
            ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU(inplace=True)),
            ("fc3", nn.Linear(84, num_classes)),
        ]))


@register_model("lenet5", input_size=28)
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)

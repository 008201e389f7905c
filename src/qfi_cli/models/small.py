"""Small models: a CNN for 8x8 digits (the default) and LeNet-5 for 28x28 MNIST / Fashion-MNIST."""

from __future__ import annotations

from torch import nn

from qfi_cli.models.registry import register_model


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Sequential):
    """Three 3x3 conv-BN-ReLU blocks and a linear classifier; about 25k weights, for 8x8 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__(
            *_conv_bn(in_channels, width), *_conv_bn(width, 2 * width), nn.MaxPool2d(2),
            *_conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )


@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    return DigitsCNN(num_classes, in_channels, width)


class LeNet5(nn.Sequential):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)

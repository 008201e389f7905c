"""ResNets: ResNet-20 for CIFAR (He et al., 2016, option-B shortcuts) and torchvision's ResNet-18."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from qfi_cli.models.norm import norm_layer
from qfi_cli.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """A CIFAR ResNet with 6n+2 layers (n=3: ResNet-20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 norm: str = "batch") -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, width)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet20", input_size=32)
def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16, norm: str = "batch") -> nn.Module:
    return ResNetCifar(20, num_classes, in_channels, width, norm)


@register_model("resnet18", input_size=32)
def resnet18(num_classes: int = 1000, in_channels: int = 3, small_input: bool = True, norm: str = "batch") -> nn.Module:
    """torchvision's ResNet-18 (random init); ``small_input`` swaps the stem for a 3x3 conv without max pooling
    (the usual change for 32x32 images); ``norm``: batch or group normalisation."""
    norm_layer(norm, 8)  # an unknown kind is a one-line error before torchvision builds anything
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes,
                                        norm_layer=lambda c: norm_layer(norm, c))
    if small_input or in_channels != 3:  # (the stem's norm bn1 keeps 64 channels)
        model.conv1 = nn.Conv2d(in_channels, 64, 3 if small_input else 7, 1 if small_input else 2,
                                1 if small_input else 3, bias=False)
    if small_input:
        model.maxpool = nn.Identity()
    return model

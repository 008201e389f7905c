"""ResNets: ResNet-20 for CIFAR (He et al., 2016, option-B shortcuts) and torchvision's ResNet-18."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from qfi_cli.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """A CIFAR ResNet with 6n+2 layers (n=3: ResNet-20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    return ResNetCifar(20, num_classes, in_channels, width)


@register_model("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3, small_input: bool = True) -> nn.Module:
    """torchvision's ResNet-18 (random init); ``small_input`` swaps the stem for a 3x3 conv without max pooling
    (the usual change for 32x32 images)."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if small_input or in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 3 if small_input else 7, 1 if small_input else 2,
                                1 if small_input else 3, bias=False)
    if small_input:
        model.maxpool = nn.Identity()
    return model

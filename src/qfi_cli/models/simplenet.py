"""SimpleNet (Hasanpour et al., 2016), the CIFAR architecture of Stutz et al.'s bit-error study, with group norm.

13 layers, about 5.5 M weights: 3x3 convolutions 64-128-128-128 | 128-128-256 | 256-256 | 512 | 1x1 2048-256 |
3x3 256, max pooling after each group, global max pooling and a linear classifier. ``norm=group`` (the default, as
in Stutz et al.) or ``batch``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from qfi_cli.models.norm import norm_layer
from qfi_cli.models.registry import register_model

# (out channels, kernel) per conv; "M" = 2x2 max pooling
PLAN = (64, 128, 128, 128, "M", 128, 128, 256, "M", 256, 256, "M", 512, "M", (2048, 1), (256, 1), "M", 256)


class SimpleNet(nn.Module):
    """SimpleNet for 32x32 images.

    >>> net = SimpleNet()
    >>> sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1)
    5484736
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, norm: str = "group") -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        cin, conv, pool = in_channels, 0, 0
        for item in PLAN:
            if item == "M":
                pool += 1
                layers.append((f"pool{pool}", nn.MaxPool2d(2)))
                continue
            cout, k = item if isinstance(item, tuple) else (item, 3)
            conv += 1
            layers += [(f"conv{conv}", nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)),
                       (f"norm{conv}", norm_layer(norm, cout)), (f"relu{conv}", nn.ReLU(inplace=True))]
            cin = cout
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("simplenet", input_size=32)
def simplenet(num_classes: int = 10, in_channels: int = 3, norm: str = "group") -> nn.Module:
    return SimpleNet(num_classes, in_channels, norm)

"""A tiny vision transformer for the 8x8 digits: 2x2 patches (16 tokens), a class token, pre-norm blocks.

Built from plain modules (Conv2d patch embedding, nn.MultiheadAttention, Linear MLP), never
nn.TransformerEncoderLayer, whose eval fast path reads the float weights directly: here every weight tensor
(patch embedding, attention in- and out-projections, MLP, head) becomes a quantized layer that faults can reach.
The class token and the position embedding are plain parameters and stay float.
"""

from __future__ import annotations

import torch
from torch import nn

from qfi_cli.models.registry import register_model


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """Patch embedding, class token + position embedding, ``depth`` blocks, final norm, linear head.

    >>> m = ViTTiny()
    >>> m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> [n for n, x in m.named_modules() if isinstance(x, (nn.Conv2d, nn.Linear, nn.MultiheadAttention))][:4]
    ['patch', 'blocks.0.attn', 'blocks.0.attn.out_proj', 'blocks.0.fc1']
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, patch: int = 2,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 2, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be mean or cls, got {pool!r}")
        self.pool = pool
        tokens = (image_size // patch) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)                      # (B, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1) if self.pool == "mean" else x[:, 0])


@register_model("vit_tiny", input_size=8)
def vit_tiny(num_classes: int = 10, in_channels: int = 1, patch: int = 2, dim: int = 64, depth: int = 2,
             heads: int = 4, mlp_ratio: int = 2, pool: str = "mean") -> nn.Module:
    return ViTTiny(num_classes, in_channels, 8, patch, dim, depth, heads, mlp_ratio, pool)

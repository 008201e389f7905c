"""Flatness of a trained quantized model: how much the loss rises when its quantized weights move by radius rho.

* ``sharpness_worst``: ``L(Q(w) + eps) - L(Q(w))`` with ``eps = rho * g / ||g||`` (one global norm over all quantized
  layers, ``g`` the gradient at ``Q(w)``): the first-order worst case of radius rho, as SAM computes its ascent;
* ``sharpness_random``: the mean of ``L(Q(w) + eps) - L(Q(w))`` over ``samples`` Gaussian directions scaled to the
  same global norm rho.

Both on one fixed batch (the first ``batch_size`` training samples, no augmentation), with the model in eval mode
(batch norm uses its running statistics, so the numbers are deterministic).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qfi_cli.data import InMemoryDataset
from qfi_cli.quant import frozen_weights, quantized_layers


@torch.no_grad()
def _loss_at(model: nn.Module, layers: list, eps: list[torch.Tensor] | None, x: torch.Tensor,
             y: torch.Tensor) -> float:
    shift = {id(m): e for m, e in zip(layers, eps or [])}
    handles = [m.register_weight_hook(lambda layer, w: w + shift[id(layer)]) for m in layers if id(m) in shift]
    try:
        return float(F.cross_entropy(model(x), y))
    finally:
        for handle in handles:
            handle.remove()


def sharpness(model: nn.Module, data: InMemoryDataset, rho: float = 0.05, batch_size: int = 256,
              samples: int = 10, seed: int = 0) -> dict[str, Any]:
    """Worst-case (SAM's first-order ascent) and random loss increase at radius ``rho`` on a fixed batch.

    >>> from qfi_cli.data import load_dataset
    >>> from qfi_cli.models import build_model
    >>> from qfi_cli.quant import quantize_model
    >>> data = load_dataset("digits")
    >>> model = quantize_model(build_model("digits_cnn", num_classes=10, in_channels=1))
    >>> s = sharpness(model, data, rho=0.05, batch_size=64, samples=2)
    >>> sorted(s), s["sharpness_rho"]
    (['sharpness_random', 'sharpness_rho', 'sharpness_worst'], 0.05)
    """
    was_training = model.training
    model.eval()
    layers = [m for _, m in quantized_layers(model)]
    x, y = next(data.batches("train", batch_size))
    try:
        with frozen_weights(model):
            weights = [m.frozen_weight for m in layers]
            for w in weights:
                w.requires_grad_(True)
            with torch.enable_grad():
                base = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(base, weights, allow_unused=True)
            for w in weights:
                w.requires_grad_(False)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]
            norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
            loss0 = float(base.detach())
            worst = _loss_at(model, layers, [g * (rho / norm) for g in grads], x, y) - loss0 if norm > 0 else 0.0
            gen = torch.Generator(device=x.device).manual_seed(int(seed))
            rises = []
            for _ in range(samples):
                noise = [torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype) for w in weights]
                scale = rho / torch.norm(torch.stack([n.norm(2) for n in noise]), 2)
                rises.append(_loss_at(model, layers, [n * scale for n in noise], x, y) - loss0)
    finally:
        model.train(was_training)
    return {"sharpness_worst": worst, "sharpness_random": sum(rises) / len(rises) if rises else 0.0,
            "sharpness_rho": rho}

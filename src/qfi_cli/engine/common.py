"""What train and inject-eval share: device, seeding, building the quantized model, accuracy."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from qfi_cli.config import RunConfig
from qfi_cli.data import InMemoryDataset
from qfi_cli.errors import QfiError, first_line
from qfi_cli.models import build_model, input_size
from qfi_cli.quant import quantize_model


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise QfiError(f"device={name} asked for, but CUDA is not available here: use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise QfiError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from None


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_quantized_model(cfg: RunConfig | dict[str, Any], data: InMemoryDataset) -> nn.Module:
    """The quantized model that ``cfg.model`` and ``cfg.quant`` describe, for ``data``'s shapes.

    A model that does not fit the data's inputs (LeNet-5 on 8x8 digits) is a one-line QfiError saying what it needs.
    """
    cfg = RunConfig.from_dict(cfg)
    name = cfg.model["name"]
    model = build_model(name, num_classes=data.num_classes, in_channels=data.in_channels,
                        **{k: v for k, v in cfg.model.items() if k != "name"})
    x = next(data.batches("test", 1))[0]
    try:  # the float model, in eval mode: no quantizer initialises on this sample, no statistic moves
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as e:
        needs = input_size(name)
        shape = "x".join(str(d) for d in x.shape[1:])
        raise QfiError(f"model {name} does not fit {cfg.data.name}'s {shape} inputs ({first_line(e)})"
                       + (f": {name} needs {needs}x{needs} inputs" if needs else "")) from None
    model.train()
    q = cfg.quant
    model = quantize_model(model, q.quantizer, wbits=q.wbits, abits=q.abits, per_channel=q.per_channel,
                           first_last_bits=q.first_last_bits)
    return model


@torch.no_grad()
def predict_correct(model: nn.Module, data: InMemoryDataset, batch_size: int,
                    limit: int | None = None) -> tuple[torch.Tensor, int]:
    """Per-sample correctness on the test split (non-finite logits count as wrong) and the number of
    samples whose logits were not finite."""
    correct, nonfinite = [], 0
    for x, y in data.batches("test", batch_size, limit=limit):
        logits = model(x)
        finite = torch.isfinite(logits).all(1)
        nonfinite += int((~finite).sum())
        correct.append((logits.argmax(1) == y) & finite)
    return torch.cat(correct), nonfinite

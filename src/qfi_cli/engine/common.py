"""What train and inject-eval share: device, seeding, building the quantized model, accuracy."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from qfi_cli.config import DataConfig, RunConfig
from qfi_cli.data import InMemoryDataset, load_dataset, load_user_data
from qfi_cli.errors import QfiError, first_line
from qfi_cli.models import build_model, build_user_model, input_size, load_float_weights, model_label
from qfi_cli.user_code import TARGET
from qfi_cli.quant import is_torch_ao, quantize_model


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


def load_data(data: DataConfig, device: str | torch.device, root: str | None = None) -> InMemoryDataset:
    """The data set ``data`` describes (``root``, when given, replaces ``data.root``), or what the user's
    ``data._target_`` callable returns, checked against the contract (``qfi_cli.data.user``)."""
    if data.target is not None:
        return load_user_data(data.target, data.kwargs, data.name, device)
    return load_dataset(data.name, root if root is not None else data.root, device)


def build_float_model(cfg: RunConfig | dict[str, Any], data: InMemoryDataset, init: bool = True) -> nn.Module:
    """The float model ``cfg.model`` describes (a registered ``name`` or the user's ``_target_``) for ``data``'s
    shapes, with the float weights of ``model.init`` loaded when ``init``; in train mode.

    A model that does not fit the data's inputs (LeNet-5 on 8x8 digits), or whose output is not one logit per
    class, is a one-line QfiError saying what it needs.
    """
    cfg = RunConfig.from_dict(cfg)
    spec = cfg.model
    label = model_label(spec)
    if TARGET in spec:
        model, needs = build_user_model(spec, data.num_classes, data.in_channels), None
    else:
        model = build_model(spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                            **{k: v for k, v in spec.items() if k not in ("name", "init")})
        needs = input_size(spec["name"])
    if init and spec.get("init") is not None:
        if is_torch_ao(model):
            raise QfiError(f"model {label} is a torch.ao int8 model: model.init loads float weights, so load its "
                           "float weights inside the _target_ before prepare/convert (see the README)")
        load_float_weights(model, spec["init"])
    x = next(data.batches("test", 1))[0]
    try:  # the float model, in eval mode: no quantizer initialises on this sample, no statistic moves
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        shape = "x".join(str(d) for d in x.shape[1:])
        raise QfiError(f"model {label} does not fit {cfg.data.name}'s {shape} inputs ({first_line(e)})"
                       + (f": {label} needs {needs}x{needs} inputs" if needs else "")) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, data.num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise QfiError(f"model {label} must return logits of shape (batch, {data.num_classes}) for the "
                       f"{data.num_classes} classes of {cfg.data.name}, got {got}")
    return model.train()


def build_quantized_model(cfg: RunConfig | dict[str, Any], data: InMemoryDataset, init: bool = True) -> nn.Module:
    """The quantized model that ``cfg.model`` and ``cfg.quant`` describe, for ``data``'s shapes: the float model
    (:func:`build_float_model`) with every layer of ``QUANTIZED_TYPES`` quantized (a model torch.ao converted
    already is returned as it is). ``init=False`` skips
    ``model.init`` (a checkpoint's own weights replace them anyway)."""
    cfg = RunConfig.from_dict(cfg)
    model = build_float_model(cfg, data, init)
    if is_torch_ao(model):  # converted by torch.ao already: its int8 weights are evaluated as they are
        return model
    q = cfg.quant
    model = quantize_model(model, q.quantizer, wbits=q.wbits, abits=q.abits, per_channel=q.per_channel,
                           first_last_bits=q.first_last_bits,
                           max_abs=cfg.train.clip_weights, group_size=q.group_size)
    return model


@torch.no_grad()
def predict_correct(model: nn.Module, data: InMemoryDataset, batch_size: int,
                    limit: int | None = None) -> tuple[torch.Tensor, int]:
    """Per-sample correctness on the test split (non-finite logits count as wrong) and the number of
    samples whose logits were not finite."""
    correct, nonfinite = [], 0
    for x, y in data.batches("test", batch_size, limit=limit):
        right, bad = scored(model(x), y)
        correct.append(right)
        nonfinite += bad
    return torch.cat(correct), nonfinite


def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-sample correctness of ``logits`` (non-finite rows count as wrong) and the number of non-finite rows.

    >>> scored(torch.tensor([[0.0, 1.0], [2.0, float("nan")]]), torch.tensor([1, 0]))
    (tensor([ True, False]), 1)
    """
    finite = torch.isfinite(logits).all(1)
    return (logits.argmax(1) == labels) & finite, int((~finite).sum())

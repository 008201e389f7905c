"""The user's own data: ``data._target_=mypkg.data.make``, a callable that returns the data set in memory.

The contract. ``make(**kwargs)`` (every key of ``data`` other than ``_target_`` and ``name`` is an argument) returns
an :class:`InMemoryDataset`, or a mapping with

* ``x_train``, ``x_test``: images (N, C, H, W), torch tensors or numpy arrays, ``uint8`` (0..255) or floating
  point (stored as float32), the same C, H, W in both;
* ``y_train``, ``y_test``: N integer labels each, in ``[0, num_classes)``;
* optional ``num_classes`` (default: largest label + 1), ``pixel_max`` (the value of a white pixel; default 255 for
  uint8, 1.0 for floats), ``mean`` / ``std`` (per channel, of the images divided by ``pixel_max``; default: computed
  from ``x_train``), ``augment`` (None, or ``"cifar"``: random crop of the 4-pixel padded image and flip).

Batches are normalised as ``(x / pixel_max - mean) / std``. Anything else is a one-line QfiError naming the key.

>>> import torch
>>> ds = as_dataset({"x_train": torch.zeros(4, 1, 2, 2), "y_train": torch.tensor([0, 1, 0, 1]),
...                  "x_test": torch.ones(2, 1, 2, 2), "y_test": torch.tensor([1, 0]), "std": 1.0}, "toy")
>>> ds.num_classes, ds.in_channels, ds.mean, ds.std, ds.pixel_max
(2, 1, (0.0,), (1.0,), 1.0)
>>> as_dataset({"x_train": torch.zeros(4, 4), "y_train": torch.zeros(4), "x_test": torch.zeros(1, 4),
...             "y_test": torch.zeros(1)}, "toy")
Traceback (most recent call last):
...
qfi_cli.errors.QfiError: data toy: x_train must be images (N, C, H, W), got shape (4, 4)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
import torch

from qfi_cli.data.tensors import AUGMENTATIONS, InMemoryDataset
from qfi_cli.errors import QfiError
from qfi_cli.user_code import TARGET, call_target, resolve_target

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("num_classes", "pixel_max", "mean", "std", "augment")
RESERVED = (TARGET, "name")  # keys of `data` that are not arguments of the callable


def _tensor(value: Any, key: str, where: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise QfiError(f"{where}: {key} must be a torch tensor or numpy array, got {type(value).__name__}")
    return value


def _channel_stats(x: torch.Tensor, pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / pixel_max``, in float64, in chunks."""
    c = x.shape[1]
    total, squares, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for part in torch.split(x, 4096):
        v = part.to(torch.float64).div_(pixel_max).transpose(0, 1).reshape(c, -1)
        total += v.sum(1).cpu()
        squares += (v * v).sum(1).cpu()
        n += v.shape[1]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _per_channel(value: Any, key: str, where: str, c: int) -> tuple[float, ...]:
    values = [value] * c if isinstance(value, (int, float)) else list(value) if isinstance(value, (list, tuple)) \
        else None
    if values is None or len(values) != c or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise QfiError(f"{where}: {key} must be a number or {c} numbers (one per channel), got {value!r}")
    return tuple(float(v) for v in values)


def _as_mapping(obj: Any, where: str) -> Mapping[str, Any]:
    """``obj`` (a dict, or an InMemoryDataset turned into one) checked to hold the required keys and no unknown."""
    if isinstance(obj, InMemoryDataset):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in ("name", "image_size",
                                                                                               "in_channels")}
    if not isinstance(obj, Mapping):
        raise QfiError(f"{where}: the callable returned a {type(obj).__name__}, not a dict with "
                       f"{', '.join(REQUIRED)} (or an InMemoryDataset)")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise QfiError(f"{where}: the returned dict has no {missing[0]} (it needs {', '.join(REQUIRED)})")
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise QfiError(f"{where}: unknown key {unknown[0]!r} in the returned dict (known: "
                       f"{', '.join(REQUIRED + OPTIONAL)})")
    return obj


def _checked_split(x: torch.Tensor, y: torch.Tensor, s: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``s``'s images and labels checked: ``x`` (N, C, H, W) uint8 or float32, ``y`` N int64 labels."""
    if x.dim() != 4:
        raise QfiError(f"{where}: x_{s} must be images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise QfiError(f"{where}: x_{s} must be uint8 or floating point, got {x.dtype}")
    if x.is_floating_point():
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise QfiError(f"{where}: x_{s} holds NaN or infinite values")
    if y.dim() != 1 or len(y) != len(x):
        raise QfiError(f"{where}: y_{s} must be {len(x)} labels (one per image of x_{s}), got shape "
                       f"{tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise QfiError(f"{where}: y_{s} must hold integer class labels, got {y.dtype}")
    y = y.to(torch.int64)
    if len(x) == 0:
        raise QfiError(f"{where}: x_{s} holds no images")
    return x, y


def _check_splits_agree(x: dict[str, torch.Tensor], where: str) -> None:
    """Raise unless the train and test images have the same shape (C, H, W) and dtype."""
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise QfiError(f"{where}: x_train images are {tuple(x['train'].shape[1:])}, x_test images "
                       f"{tuple(x['test'].shape[1:])}: they must agree")
    if x["train"].dtype != x["test"].dtype:
        raise QfiError(f"{where}: x_train is {x['train'].dtype}, x_test {x['test'].dtype}: they must agree")


def _num_classes(obj: Mapping[str, Any], y: dict[str, torch.Tensor], where: str) -> int:
    """``num_classes`` (default: the largest label + 1), checked to cover every label of both splits."""
    top = int(max(y["train"].max(), y["test"].max()))
    num_classes = obj.get("num_classes", top + 1)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise QfiError(f"{where}: num_classes must be a whole number >= 1, got {num_classes!r}")
    low = int(min(y["train"].min(), y["test"].min()))
    if low < 0 or top >= num_classes:
        raise QfiError(f"{where}: labels must lie in [0, {num_classes}) (num_classes={num_classes}), got "
                       f"{low}..{top}")
    return num_classes


def _pixel_max(obj: Mapping[str, Any], x_train: torch.Tensor, where: str) -> Any:
    """``pixel_max`` (default: 255 for uint8 images, 1 for float ones), checked to be a positive number."""
    pixel_max = obj.get("pixel_max", 255.0 if x_train.dtype == torch.uint8 else 1.0)
    if isinstance(pixel_max, bool) or not isinstance(pixel_max, (int, float)) or not 0 < pixel_max < math.inf:
        raise QfiError(f"{where}: pixel_max must be a positive number, got {pixel_max!r}")
    return pixel_max


def _normalization(obj: Mapping[str, Any], x_train: torch.Tensor, pixel_max: float, c: int,
                   where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)``: as given, else measured on ``x_train``; std checked > 0."""
    mean, std = (None, None)
    if obj.get("mean") is None or obj.get("std") is None:
        mean, std = _channel_stats(x_train, pixel_max)
    mean = _per_channel(obj["mean"], "mean", where, c) if obj.get("mean") is not None else mean
    std = _per_channel(obj["std"], "std", where, c) if obj.get("std") is not None else std
    if not all(s > 0 for s in std):
        raise QfiError(f"{where}: std must be > 0 in every channel, got {std} (constant images?)")
    return mean, std


def as_dataset(obj: Any, name: str) -> InMemoryDataset:
    """Check what a data callable returned against the contract (module docstring); the data set it describes."""
    where = f"data {name}"
    obj = _as_mapping(obj, where)
    x = {s: _tensor(obj[f"x_{s}"], f"x_{s}", where) for s in ("train", "test")}
    y = {s: _tensor(obj[f"y_{s}"], f"y_{s}", where) for s in ("train", "test")}
    for s in ("train", "test"):
        x[s], y[s] = _checked_split(x[s], y[s], s, where)
    _check_splits_agree(x, where)
    num_classes = _num_classes(obj, y, where)
    c = int(x["train"].shape[1])
    pixel_max = _pixel_max(obj, x["train"], where)
    augment = obj.get("augment")
    if augment not in AUGMENTATIONS:
        raise QfiError(f"{where}: augment must be null or 'cifar', got {augment!r}")
    mean, std = _normalization(obj, x["train"], float(pixel_max), c, where)
    return InMemoryDataset(name=name, x_train=x["train"], y_train=y["train"], x_test=x["test"], y_test=y["test"],
                           num_classes=num_classes, in_channels=c, image_size=int(x["train"].shape[-2]),
                           mean=mean, std=std, augment=augment, pixel_max=float(pixel_max))


def load_user_data(path: str, kwargs: Mapping[str, Any], name: str,
                   device: str | torch.device = "cpu") -> InMemoryDataset:
    """Call the ``data._target_`` callable with ``kwargs`` and check what it returns; tensors on ``device``."""
    key = f"data.{TARGET}"
    fn = resolve_target(path, key)
    return as_dataset(call_target(fn, dict(kwargs), key, path), name).to(device)

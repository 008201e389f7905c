"""The user's own model: ``model._target_`` (any ``nn.Module``), and float weights from ``model.init``.

Rules for ``model._target_=mypkg.nets.MyNet`` (a class, or a function that returns a module):

* every key of ``model`` other than ``_target_``, ``name`` (a label for results; the class name by default) and
  ``init`` is a constructor argument: ``model.hidden=64`` calls ``MyNet(hidden=64)``;
* qfi passes ``num_classes`` and ``in_channels`` (from the data set) only to a constructor that names them as
  parameters, and only when ``model`` does not set them itself;
* its layers whose exact type has a row in ``qfi_cli.quant.QUANTIZED_TYPES`` (``nn.Conv2d``, ``nn.Linear``) become
  quantized layers; anything else stays float.

``model.init=PATH`` loads a float ``state_dict`` (``torch.save(net.state_dict(), PATH)``, read with
``weights_only=True``) into the float model before it is quantized; keys and shapes must match exactly.

>>> from torch import nn
>>> net = build_user_model({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}, 10, 1)
>>> isinstance(net, nn.Linear), net.out_features
(True, 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from qfi_cli.errors import QfiError, first_line
from qfi_cli.user_code import TARGET, call_target, resolve_target, target_label

RESERVED = (TARGET, "name", "init")  # keys of `model` that are not constructor arguments


def build_user_model(spec: Mapping[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """The float model that ``spec[_target_]`` builds with the other keys of ``spec`` as its arguments."""
    path = spec[TARGET]
    key = f"model.{TARGET}"
    fn = resolve_target(path, key)
    if isinstance(fn, type) and not issubclass(fn, nn.Module):
        raise QfiError(f"{key}={path} is a class but not a torch.nn.Module")
    kwargs = {k: v for k, v in spec.items() if k not in RESERVED}
    model = call_target(fn, kwargs, key, path, optional={"num_classes": num_classes, "in_channels": in_channels})
    if not isinstance(model, nn.Module):
        raise QfiError(f"{key}={path} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def model_label(spec: Mapping[str, Any]) -> str:
    """The name results show for a model: ``name``, else the class name of ``_target_``.

    >>> model_label({"name": "digits_cnn"}), model_label({"_target_": "mypkg.nets.MyNet"})
    ('digits_cnn', 'MyNet')
    """
    name = spec.get("name")
    return str(name) if name is not None else target_label(spec.get(TARGET, "?"))


def _shape(t: Any) -> str:
    return "x".join(str(d) for d in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def load_float_weights(model: nn.Module, path: str | Path) -> None:
    """Load the float ``state_dict`` saved at ``path`` into ``model`` (strict: every key, every shape).

    >>> import tempfile, os
    >>> net = nn.Linear(3, 2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save(net.state_dict(), os.path.join(d, "w.pt"))
    ...     other = nn.Linear(3, 2); load_float_weights(other, os.path.join(d, "w.pt"))
    ...     load_float_weights(nn.Linear(4, 2), os.path.join(d, "w.pt"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: model.init ...w.pt does not fit the model: weight is 2x3 in the file, 2x4 in the model
    """
    path = Path(path)
    if not path.is_file():
        raise QfiError(f"model.init {path}: no such file (a torch.save(model.state_dict()) file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and weights_only errors alike
        raise QfiError(f"model.init {path} cannot be read as a state_dict (weights only): {first_line(e)}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QfiError(f"model.init {path} is not a state_dict (a mapping of names to tensors): save it with "
                       "torch.save(model.state_dict(), path)")
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3
                                                                else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}"
                        + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""))
    for k, v in state.items():
        if k in own and v.shape != own[k].shape:
            problems.append(f"{k} is {_shape(v)} in the file, {_shape(own[k])} in the model")
            break
    if problems:
        raise QfiError(f"model.init {path} does not fit the model: {'; '.join(problems)}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)

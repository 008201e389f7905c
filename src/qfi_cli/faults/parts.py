"""The stored parts of a quantized layer that faults may reach (``fault.target``): one small registry, one
mechanism.

A quantized layer stores more than its weight codes. Each part here says how many entries a layer stores, how
wide each one is, and where a trial writes its faults; the injector draws every selected part's bits from the
fault source and writes them with the one bit primitive (``faults.flips``), so a part is one class:

* ``weights``: the integer weight codes (or IEEE bits of float storage), ``wbits`` bits each (as before).
* ``biases``: the layer's bias, stored as IEEE floats of its own dtype (fp32: 32 bits per entry); qfi's layers
  compute with a float bias, so flipping bit ``b`` is XOR on the float's bit pattern, written into the bias.
* ``scales``: every scale of the weight encoding (one per tensor, per output channel, or per group: scale ``j``
  governs the flat weight entries ``[j * group, (j + 1) * group)``, ``Encoding.group``), stored as
  ``fault.scale_format`` (fp32 or fp16) IEEE bits; a faulty scale ``s'`` re-decodes every entry it governs as
  ``(code - zero_point) * s'``.
* ``zero_points``: the zero point of quantizers that store one (``Quantizer.STORES_ZERO_POINT``: affine), an
  unsigned integer code of ``wbits`` bits; a faulty zero point ``z'`` re-decodes the whole tensor as
  ``(code - z') * scale``.

Scales and zero points are parameters of the weight encoding (``direct`` is False): their faults build a faulty
``Encoding``, and the weight entries they govern are decoded once with it (from the codes the clean encoding gives
the frozen weight, after that trial's weight-code faults), so a scale and a code fault of one entry compose.

>>> [p.name for p in PARTS.values()]
['weights', 'scales', 'zero_points', 'biases']
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import torch

from qfi_cli.errors import QfiError
from qfi_cli.quant.encoding import FLOAT_FORMATS, Encoding, float_encoding
from qfi_cli.registry import Registry

SCALE_FORMATS = ("fp32", "fp16")
_FORMAT_OF_DTYPE = {dtype: name for name, (dtype, _, _) in FLOAT_FORMATS.items()}


class Stored(NamedTuple):
    """One part of one layer now: ``values`` (flat; a view of the layer's storage for a direct part, a copy of the
    encoding parameter otherwise) and how each entry is stored."""

    values: torch.Tensor | np.ndarray
    encoding: Encoding


class StoredPart:
    """One kind of stored tensor of a quantized layer (see the module docstring). ``direct``: its faults are
    written into the layer's own storage; otherwise they change the weight encoding (``faulty``) and the weight
    entries it ``governs`` are decoded again."""

    name = ""
    direct = True

    def size(self, layer: Any, fault: Any) -> tuple[int, int]:
        """(entries, bits per entry) ``layer`` stores for this part (0 entries: none)."""
        raise NotImplementedError

    def stored(self, layer: Any, fault: Any, frozen_target: Any) -> Stored | None:
        """Where a trial writes this part's faults (None: nothing to write in place)."""
        raise NotImplementedError

    def faulty(self, encoding: Encoding, values: Any, index: np.ndarray) -> Encoding:
        """The weight encoding with this part's faulty entries (``values`` after the write, at ``index``)."""
        raise NotImplementedError

    def governs(self, encoding: Encoding, index: np.ndarray, n_weights: int) -> np.ndarray:
        """The flat weight entries the faulty entries ``index`` govern."""
        raise NotImplementedError


PARTS: Registry[StoredPart] = Registry("stored part")


def register_part(cls: type) -> type:
    """Class decorator: register ``cls()`` under its ``name``."""
    PARTS.register(cls.name)(cls())
    return cls


def weight_encoding(layer: Any) -> Encoding:
    """The layer's weight ``Encoding``: the frozen one inside ``frozen_weights``, else one clean quantization."""
    if layer.frozen_encoding is not None:
        return layer.frozen_encoding
    with torch.no_grad():
        return layer.quantize_weight_clean().encoding


def _frozen_encoding(layer: Any, part: str) -> Encoding:
    if layer.frozen_encoding is None:
        raise QfiError(f"fault.target {part} re-decodes the frozen weights: evaluate inside frozen_weights(model)")
    return layer.frozen_encoding


@register_part
class WeightCodes(StoredPart):
    """The weight codes: ``wbits`` bits per entry, written into the frozen weight (or per forward by the slot)."""

    name = "weights"

    def size(self, layer: Any, fault: Any) -> tuple[int, int]:
        return layer.weight.numel(), layer.wbits

    def stored(self, layer: Any, fault: Any, frozen_target: Any) -> Stored | None:
        if layer.frozen_weight is None:
            return None  # the weight slot's hook faults each forward's copy
        return Stored(frozen_target, layer.frozen_encoding)


@register_part
class Scales(StoredPart):
    """The weight scales as ``fault.scale_format`` IEEE bits (scale-less encodings, floats and RQuant: none).

    >>> enc = Encoding(bits=8, scale=torch.tensor([0.5, 0.25]), group=3)
    >>> Scales().governs(enc, np.array([1]), 6).tolist()
    [3, 4, 5]
    """

    name = "scales"
    direct = False

    def size(self, layer: Any, fault: Any) -> tuple[int, int]:
        enc = weight_encoding(layer)
        if enc.is_float or enc.scale is None:
            return 0, FLOAT_FORMATS[fault.scale_format][2]
        return enc.scale.numel(), FLOAT_FORMATS[fault.scale_format][2]

    def stored(self, layer: Any, fault: Any, frozen_target: Any) -> Stored | None:
        enc = _frozen_encoding(layer, self.name)
        if enc.is_float or enc.scale is None:
            return None
        storage = FLOAT_FORMATS[fault.scale_format][0]
        return Stored(enc.scale.detach().reshape(-1).to(storage, copy=True), float_encoding(fault.scale_format))

    def faulty(self, encoding: Encoding, values: Any, index: np.ndarray) -> Encoding:
        scale = encoding.scale.detach().clone()  # a copy: the encoding's scale may be a quantizer's parameter
        at = torch.from_numpy(index).to(scale.device)
        scale.view(-1)[at] = values[at].to(scale.dtype)  # only the faulty entries take the stored format's value
        return dataclasses.replace(encoding, scale=scale)

    def governs(self, encoding: Encoding, index: np.ndarray, n_weights: int) -> np.ndarray:
        if encoding.scale.numel() == 1:
            return np.arange(n_weights, dtype=np.int64)
        g = encoding.group
        return (index[:, None] * g + np.arange(g, dtype=np.int64)).reshape(-1)


@register_part
class ZeroPoints(StoredPart):
    """The zero points of quantizers that store them, unsigned ``wbits``-bit codes: one per tensor, or one per
    group (group-wise affine codes, laid out as the scales).

    >>> enc = Encoding(bits=4, scale=torch.tensor([[1.0, 0.5]]), zero_point=torch.tensor([[8, 3]]), group=2)
    >>> ZeroPoints().faulty(enc, np.array([8.0, 11.0]), np.array([1])).zero_point.tolist()
    [[8, 11]]
    """

    name = "zero_points"
    direct = False

    def size(self, layer: Any, fault: Any) -> tuple[int, int]:
        stores = getattr(layer.quan_w_fn, "STORES_ZERO_POINT", False)
        enc = weight_encoding(layer) if stores else None
        if enc is None or enc.is_float:
            return 0, layer.wbits
        return (enc.zero_point.numel() if torch.is_tensor(enc.zero_point) else 1), layer.wbits

    def stored(self, layer: Any, fault: Any, frozen_target: Any) -> Stored | None:
        enc = _frozen_encoding(layer, self.name)
        if self.size(layer, fault)[0] == 0:
            return None
        zp = enc.zero_point
        values = (zp.detach().reshape(-1).cpu().numpy().astype(np.float64) if torch.is_tensor(zp)
                  else np.array([zp], dtype=np.float64))
        return Stored(values, Encoding(bits=layer.wbits, scale=torch.tensor(1.0, dtype=torch.float64), signed=False))

    def faulty(self, encoding: Encoding, values: Any, index: np.ndarray) -> Encoding:
        if not torch.is_tensor(encoding.zero_point):
            return dataclasses.replace(encoding, zero_point=int(values[0]))
        zp = encoding.zero_point.clone()
        at = torch.from_numpy(index).to(zp.device)
        zp.view(-1)[at] = torch.from_numpy(np.asarray(values)[index]).round().to(zp.dtype).to(zp.device)
        return dataclasses.replace(encoding, zero_point=zp)

    def governs(self, encoding: Encoding, index: np.ndarray, n_weights: int) -> np.ndarray:
        if not torch.is_tensor(encoding.zero_point) or encoding.zero_point.numel() == 1:
            return np.arange(n_weights, dtype=np.int64)
        g = encoding.group
        return (index[:, None] * g + np.arange(g, dtype=np.int64)).reshape(-1)


@register_part
class Biases(StoredPart):
    """The bias as IEEE floats of its own dtype (fp32: 32 bits an entry), written into the bias parameter."""

    name = "biases"

    def size(self, layer: Any, fault: Any) -> tuple[int, int]:
        bias = _bias(layer)
        return (0, 32) if bias is None else (bias.numel(), FLOAT_FORMATS[_bias_format(bias)][2])

    def stored(self, layer: Any, fault: Any, frozen_target: Any) -> Stored | None:
        bias = _bias(layer)
        return None if bias is None else Stored(bias.detach().view(-1), float_encoding(_bias_format(bias)))


def _bias(layer: Any) -> torch.Tensor | None:
    bias = getattr(layer, "bias", None)
    return bias if isinstance(bias, torch.Tensor) and bias.numel() else None


def _bias_format(bias: torch.Tensor) -> str:
    fmt = _FORMAT_OF_DTYPE.get(bias.dtype)
    if fmt is None:
        raise QfiError(f"bias faults need an fp32, fp16 or bf16 bias, got {bias.dtype}")
    return fmt


def redecode(target: torch.Tensor | np.ndarray, clean: Encoding, faulty: Encoding,
             index: np.ndarray) -> tuple[torch.Tensor | np.ndarray, Any, Any]:
    """Decode the flat weight entries ``index`` of ``target`` (the frozen weight or its numpy view) with the
    ``faulty`` encoding, from the codes the ``clean`` one gives them, in place; returns ``(target, index, old)``
    (``target[index] = old`` undoes it).

    >>> w = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    >>> clean = Encoding(bits=8, scale=torch.tensor(1.0))
    >>> _, _, old = redecode(w, clean, dataclasses.replace(clean, scale=torch.tensor(0.5)), np.array([0, 2]))
    >>> w.tolist(), old.tolist()
    ([0.5, -2.0, 1.5], [1.0, 3.0])
    """
    index = np.unique(index)
    if isinstance(target, np.ndarray):
        old = target[index]
        with np.errstate(over="ignore", invalid="ignore"):  # a faulty scale may well be inf or NaN
            target[index] = faulty.decode(clean.encode(old, index), index, dtype=target.dtype)
        return target, index, old
    at = torch.from_numpy(index).to(target.device)
    old = target[at]
    target[at] = faulty.decode(clean.encode(old, at), at, dtype=target.dtype)
    return target, at, old

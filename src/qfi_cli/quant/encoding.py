"""How a quantized tensor is stored: the record a quantizer returns with every quantized value.

A quantizer call gives ``Quantized(value, encoding)``. ``value`` is the tensor the layer computes with; the
``Encoding`` says how each of its entries is held in memory as a ``bits``-wide pattern, so that fault injection,
sensitivity maps and attacks act on the stored bits without knowing the quantizer:

* integer codes: ``value = (code - zero_point) * scale``; signed codes are stored in k-bit two's complement
  (``[-2**(k-1), 2**(k-1) - 1]``), unsigned ones as themselves (``[0, 2**k - 1]``). ``scale`` is one number, one
  per output channel or one per group of ``group`` consecutive entries of each row (``quant.group_size``): in every
  case scale element ``j`` (in the scale's flat order) governs flat entries ``[j * group, (j + 1) * group)``;
* IEEE floats (``float_format`` ``fp32``, ``fp16`` or ``bf16``): the pattern is the float's own bits (sign,
  exponent, mantissa).

``encode(values, index)`` turns values into patterns (int64 in ``[0, 2**bits)``), ``decode(patterns, index)``
turns patterns back; ``index`` (flat positions) selects the scales of a subset, so a trial touches O(flips)
entries. Integer encodings take torch tensors or numpy arrays alike (numpy is the cheaper way for the few entries a
trial touches on the CPU) and compute the same IEEE values either way.

>>> import torch
>>> enc = Encoding(bits=8, scale=torch.tensor(0.5))
>>> enc.encode(torch.tensor([1.5, -0.5])).tolist()        # codes 3 and -1 as 8-bit patterns
[3, 255]
>>> enc.decode(torch.tensor([3 ^ 128, 255])).tolist()       # the sign bit of code 3 flipped: -125 * 0.5
[-62.5, -0.5]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from qfi_cli.errors import QfiError

# name -> (storage dtype, same-width integer view dtype, bits)
FLOAT_FORMATS: dict[str, tuple[torch.dtype, torch.dtype, int]] = {
    "fp32": (torch.float32, torch.int32, 32),
    "fp16": (torch.float16, torch.int16, 16),
    "bf16": (torch.bfloat16, torch.int16, 16),
}


@dataclass(frozen=True, eq=False)
class Encoding:
    """The storage of a quantized tensor: integer codes (``scale``, ``zero_point``, ``signed``) or IEEE floats.

    ``group`` is how many consecutive entries of the flattened tensor share one scale (per-channel scales along
    dim 0, or group-wise scales inside each row); 0 means one scale for all. Scale element ``j`` of the flattened
    ``scale`` governs flat entries ``[j * group, (j + 1) * group)``. ``shape``: the encoded tensor's shape, set for
    group-wise scales (which do not broadcast against it), so that ``_scale_at(None)`` can expand them.

    >>> g = Encoding(bits=4, scale=torch.tensor([[1.0, 0.5]]), group=2, shape=(1, 4))  # one row, two groups
    >>> g.encode(torch.tensor([[3.0, -1.0, 1.0, -0.5]])).tolist(), g.decode(torch.tensor([7]), torch.tensor([3]))
    ([[3, 15, 2, 15]], tensor([3.5000]))

    >>> e = Encoding(bits=4, scale=torch.tensor(1.0), zero_point=8, signed=False)
    >>> e.encode(torch.tensor([-8.0, 0.0, 7.0])).tolist(), e.code_range()
    ([0, 8, 15], (0, 15))
    """

    bits: int
    scale: torch.Tensor | None = None
    zero_point: int | torch.Tensor = 0  # a tensor (int64, laid out as ``scale``) for group-wise affine codes
    signed: bool = True
    group: int = 0
    float_format: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def is_float(self) -> bool:
        return self.float_format is not None

    def code_range(self) -> tuple[int, int]:
        """Smallest and largest integer code (for floats: the pattern range)."""
        if self.is_float or not self.signed:
            return 0, 2**self.bits - 1
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    @functools.cached_property
    def _scale_numpy(self) -> np.ndarray:
        return self.scale.detach().cpu().numpy()

    @functools.cached_property
    def _zero_numpy(self) -> np.ndarray:
        return self.zero_point.detach().cpu().numpy()

    def _scale_at(self, index: Any) -> Any:
        """The scale of each entry: broadcastable to the whole tensor (group-wise scales expanded to ``shape``), or
        one per flat position in ``index`` (a numpy ``index`` gets numpy scales)."""
        return self._per_entry(self._scale_numpy if isinstance(index, np.ndarray) else self.scale.detach(), index)

    def _zero_at(self, index: Any) -> Any:
        """The zero point of each entry, as ``_scale_at`` (an int, or a tensor with one per group of ``group``)."""
        if not isinstance(self.zero_point, torch.Tensor):
            return self.zero_point
        return self._per_entry(self._zero_numpy if isinstance(index, np.ndarray) else self.zero_point, index)

    def _per_entry(self, s: Any, index: Any) -> Any:
        if s.size == 1 if isinstance(s, np.ndarray) else s.numel() == 1:
            return s.reshape(())
        if index is None:
            return s if self.shape is None else s.reshape(-1, 1).expand(-1, self.group).reshape(self.shape)
        return s.reshape(-1)[index // self.group]

    def codes(self, values: Any, index: Any = None) -> Any:
        """Integer codes (int64) of ``values``: ``round(value / scale) + zero_point`` (floats: their bit patterns).

        ``values`` is the whole tensor (its own shape) or, with ``index``, the entries at those flat positions.
        """
        if self.is_float:
            return torch.bitwise_and(self._float_bits(values), (1 << self.bits) - 1)
        if isinstance(values, np.ndarray):  # np.rint, like torch.round, rounds half to even
            return np.rint(values / self._scale_at(index)).astype(np.int64) + self._zero_at(index)
        return torch.round(values.detach() / self._scale_at(index)).long() + self._zero_at(index)

    def encode(self, values: Any, index: Any = None) -> Any:
        """Stored bit patterns of ``values`` (int64 in ``[0, 2**bits)``); ``index``: their flat positions."""
        return self.codes(values, index) & ((1 << self.bits) - 1)

    def decode(self, patterns: Any, index: Any = None, dtype: Any = torch.float32) -> Any:
        """Values of stored bit patterns (the inverse of ``encode``); ``index``: their flat positions. Numpy
        patterns (integer encodings) give a numpy array of ``dtype`` (a numpy dtype)."""
        if isinstance(patterns, np.ndarray):
            u = patterns.astype(np.int64, copy=False) & ((1 << self.bits) - 1)
            if self.signed:
                u = np.where(u >= (1 << (self.bits - 1)), u - (1 << self.bits), u)
            scale = self._scale_at(index)
            return ((u - self._zero_at(index)).astype(scale.dtype) * scale).astype(dtype, copy=False)
        u = torch.bitwise_and(patterns.long(), (1 << self.bits) - 1)
        if self.is_float:
            storage, view, bits = FLOAT_FORMATS[self.float_format]
            signed = torch.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
            return signed.to(view).view(storage).to(dtype)
        if self.signed:
            u = torch.where(u >= (1 << (self.bits - 1)), u - (1 << self.bits), u)
        scale = self._scale_at(index)
        return ((u - self._zero_at(index)).to(scale.dtype) * scale).to(dtype)

    def _float_bits(self, values: torch.Tensor) -> torch.Tensor:
        storage, view, _ = FLOAT_FORMATS[self.float_format]
        return values.detach().to(storage).view(view).long()


def float_encoding(fmt: str) -> Encoding:
    """The encoding of IEEE floats in format ``fmt`` (``fp32``, ``fp16`` or ``bf16``).

    >>> enc = float_encoding("fp16")
    >>> hex(int(enc.encode(torch.tensor([1.0]))[0])), enc.decode(torch.tensor([0x7C00])).item()  # exponent all 1s
    ('0x3c00', inf)
    """
    if fmt not in FLOAT_FORMATS:
        raise QfiError(f"unknown float format {fmt!r}; choose one of: {', '.join(FLOAT_FORMATS)}")
    return Encoding(bits=FLOAT_FORMATS[fmt][2], float_format=fmt)


FP32 = float_encoding("fp32")


class Quantized(NamedTuple):
    """What a quantizer returns: the value to compute with and how it is stored."""

    value: torch.Tensor
    encoding: Encoding


RQUANT_EPSILON = 0.001  # Stutz et al.'s step is (1 + 0.001) / (2**(m-1) - 1): the grid's ends lie just past [-1, 1]


@dataclass(frozen=True, eq=False)
class RQuantEncoding(Encoding):
    """Stutz et al.'s RQuant storage (``ClippedAdaptiveAlternativeUnsymmetricUnsignedRoundedFixedPointQuantization``
    of random-bit-error-robustness, ``common/quantization.py``), one range per tensor.

    A tensor, first clamped to ``[-max_abs, max_abs]`` (the weight clipping bound; none without clipping), has range
    ``[lo, hi]`` = its min and max. Encoding maps it to ``t = 2 (x - lo) / (hi - lo) - 1`` in [-1, 1] and stores the
    unsigned m-bit code ``c = round(min(clamp(t, -1, 1) / delta + 2**(m-1), 2**m - 1))`` with
    ``delta = 1.001 / (2**(m-1) - 1)``: codes 1 .. 2**m - 1, so ``2**m - 1`` distinct values (3 at 2 bits). Decoding
    is ``d = clamp((clamp(c, 0, 2**m - 1) - 2**(m-1)) * delta, -1, 1)`` and ``value = clamp((d + 1) / 2 * (hi - lo)
    + lo, lo, hi)``: every code, a bit error's too, decodes inside the tensor's range (code 0, never stored, decodes
    to ``lo`` like code 1). Every step is the reference's float32 operation in the reference's order, so codes and
    values agree bit for bit. A constant tensor (``hi == lo``) is stored as code 0 and every code decodes to the constant
    (the reference divides 0 by 0 there: its NaN codes cast to 0, and every code decodes to the constant).

    ``lo``, ``hi`` and ``span`` (``hi - lo`` rounded once to float32, as the reference's Python float difference
    is when it multiplies a float32 tensor) are 0-dim float32 tensors.

    >>> enc = RQuantEncoding(bits=2, lo=torch.tensor(-1.0), hi=torch.tensor(2.0), span=torch.tensor(3.0))
    >>> enc.encode(torch.tensor([-1.0, 0.5, 2.0])).tolist(), enc.decode(torch.tensor([0, 1, 2, 3])).tolist()
    ([1, 2, 3], [-1.0, -1.0, 0.5, 2.0])
    """

    lo: Any = None
    hi: Any = None
    span: Any = None
    max_abs: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "signed", False)

    @property
    def delta(self) -> float:
        return (1 + RQUANT_EPSILON) / (2 ** (self.bits - 1) - 1)

    @functools.cached_property
    def _numpy(self) -> tuple[np.float32, np.float32, np.float32]:
        return tuple(np.float32(t.detach().cpu().item()) for t in (self.lo, self.hi, self.span))

    def _bounds(self, like: Any) -> tuple[Any, Any, Any]:
        if isinstance(like, np.ndarray):
            return self._numpy
        return tuple(t.detach().to(like.device) for t in (self.lo, self.hi, self.span))

    def codes(self, values: Any, index: Any = None) -> Any:
        """The stored codes (int64 in [0, 2**bits)) of ``values`` (float32 arithmetic, as the reference)."""
        half, top = 2 ** (self.bits - 1), 2**self.bits - 1
        if isinstance(values, np.ndarray):
            lo, hi, span = self._numpy
            x = values.astype(np.float32)
            if self.max_abs is not None:
                x = np.clip(x, np.float32(-self.max_abs), np.float32(self.max_abs))
            x = np.clip(x, lo, hi)
            with np.errstate(invalid="ignore", divide="ignore"):
                t = (x - lo) / span * np.float32(2) - np.float32(1)
            q = np.minimum(np.clip(t, np.float32(-1), np.float32(1)) / np.float32(self.delta) + np.float32(half),
                           np.float32(top))
            q = np.rint(q)
            return np.where(span == 0, 0, q).astype(np.int64)
        lo, hi, span = self._bounds(values)
        x = values.detach().float()
        if self.max_abs is not None:
            x = x.clamp(-self.max_abs, self.max_abs)
        t = torch.minimum(torch.maximum(x, lo), hi).sub_(lo).div_(span).mul_(2).sub_(1)
        q = t.clamp_(-1, 1).div_(self.delta).add_(half).clamp_(max=top).round_()
        return torch.where(span == 0, torch.zeros_like(q), q).long()

    def encode(self, values: Any, index: Any = None) -> Any:
        return self.codes(values, index)

    def decode(self, patterns: Any, index: Any = None, dtype: Any = torch.float32) -> Any:
        half, top = 2 ** (self.bits - 1), 2**self.bits - 1
        if isinstance(patterns, np.ndarray):
            lo, hi, span = self._numpy
            u = (patterns.astype(np.int64, copy=False) & top).astype(np.float32)
            d = np.clip((np.clip(u, np.float32(0), np.float32(top)) - np.float32(half)) * np.float32(self.delta),
                        np.float32(-1), np.float32(1))
            v = np.clip((d + np.float32(1)) / np.float32(2) * span + lo, lo, hi)
            return v.astype(dtype, copy=False)
        lo, hi, span = self._bounds(patterns)
        u = torch.bitwise_and(patterns.long(), top).float()
        d = u.clamp_(0, top).sub_(half).mul_(self.delta).clamp_(-1, 1)
        v = d.add_(1).div_(2).mul_(span).add_(lo)
        return torch.minimum(torch.maximum(v, lo), hi).to(dtype)

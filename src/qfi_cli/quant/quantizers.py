"""Quantizers: LSQ (learned step size), symmetric min-max (per tensor or per channel), affine (asymmetric,
unsigned codes) and RQuant (Stutz et al.'s robust quantization, as their code does it).

``q.quantize(x, bits, is_activation=False)`` returns ``Quantized(value, encoding)``: the fake-quantized tensor
``(codes - zero_point) * scale`` with straight-through gradients, and the ``Encoding`` record saying how it is
stored (scale, zero point, signedness, bits; see ``qfi_cli.quant.encoding``). Calling ``q(x, bits)`` returns the
value alone. Signed codes live in k-bit two's complement ``[-2**(k-1), 2**(k-1) - 1]``, unsigned ones in
``[0, 2**k - 1]``. ``bits >= 32`` is a float pass-through, stored as fp32. ``fp16`` / ``bf16`` / ``fp32`` store
values as IEEE floats of that format (no integer codes): the value is rounded to the format.

A new quantizer is one class: subclass ``Quantizer``, implement ``quantize`` and register it with
``@QUANTIZERS.register(name)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.quant.encoding import FLOAT_FORMATS, FP32, Encoding, Quantized, RQuantEncoding, float_encoding
from qfi_cli.registry import Registry

QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantizer")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 32)


def check_bits(bits: int, what: str = "bit width", valid: tuple[int, ...] = VALID_BITS) -> int:
    """Return ``bits`` if it is one of ``valid`` (2..8 or 32 by default), else raise a one-line QfiError.

    >>> check_bits(4), check_bits(16, valid=(16, 32))
    (4, 16)
    """
    if bits is None or int(bits) != bits or int(bits) not in valid:
        allowed = "2..8 or 32 (float pass-through)" if valid == VALID_BITS else " or ".join(map(str, valid))
        raise QfiError(f"{what} must be {allowed}, got {bits}")
    return int(bits)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest integer code of a k-bit quantizer.

    >>> code_range(8, True), code_range(4, False)
    ((-128, 127), (0, 15))
    """
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@functools.lru_cache(maxsize=None)
def _clamp_passes_bounds() -> tuple[bool, bool]:
    """Whether autograd's clamp passes the gradient at x == min and at x == max (torch releases differ)."""
    with torch.enable_grad():
        x = torch.tensor([0.0, 1.0], requires_grad=True)
        (grad,) = torch.autograd.grad(torch.clamp(x, 0, 1).sum(), x)
    return bool(grad[0] == 1), bool(grad[1] == 1)


class _FakeQuantizeSTE(torch.autograd.Function):
    """``round_ste(clamp(x / scale, qn, qp)) * scale`` as one autograd node, where ``round_ste(v) = (v.round() -
    v).detach() + v`` rounds with a straight-through gradient.

    Its values and gradients equal those autograd takes through that composite (MulBackward, the
    straight-through add, ClampBackward, DivBackward: the same floating-point operations in the same order),
    with fewer full-size passes and temporaries: clamp's gradient mask is a float 0/1 tensor (bool masks and
    ``torch.where`` are several times slower on CPU), and the step's gradient is reduced from in-place products.
    One difference, for gradients that are already non-finite: where clamp cuts the gradient, an infinite or
    NaN upstream gradient gives NaN here (``inf * 0``) where autograd gives 0; a cut zero may also be -0.0.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, qn: int, qp: int) -> torch.Tensor:  # noqa: ANN001
        a = torch.div(x, scale)
        # Where clamp passes the gradient, as 1.0 / 0.0 (NaN: 0). Comparisons written straight into float tensors
        # cost a fraction of bool masks and torch.where on CPU.
        low_in, high_in = _clamp_passes_bounds()
        inside = (torch.ge if low_in else torch.gt)(a, qn, out=torch.empty_like(a))
        inside.mul_((torch.le if high_in else torch.lt)(a, qp, out=torch.empty_like(a)))
        r = torch.clamp(a, qn, qp).round_()  # (round(c) - c) + c == round(c) exactly for |c| < 2**23
        ctx.save_for_backward(a, r, inside, scale)
        ctx.x_shape = x.shape
        return r * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        a, r, inside, scale = ctx.saved_tensors
        need_x, need_scale = ctx.needs_input_grad[:2]
        grad_x = grad_scale_ = None
        g = grad * scale  # d(r * scale)/dr, passed straight through round
        g.mul_(inside)  # ClampBackward's torch.where(inside, g, 0), for a finite g
        if need_scale:
            # d(r * scale)/dscale = sum(grad * r); d(x / scale)/dscale = sum(-g * ((x / scale) / scale))
            from_mul = (grad * r).sum_to_size(scale.shape)
            from_div = torch.div(a, scale).mul_(g).sum_to_size(scale.shape).neg_()
            grad_scale_ = from_mul + from_div
        if need_x:
            grad_x = g.div_(scale)
            if grad_x.shape != ctx.x_shape:
                grad_x = grad_x.sum_to_size(ctx.x_shape)
        return grad_x, grad_scale_, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """``round(clamp(x / scale, qn, qp)) * scale`` with straight-through rounding (gradients flow to x and scale).

    Same values and gradients as the composite ``round_ste(torch.clamp(x / scale, qn, qp)) * scale`` (see
    ``_FakeQuantizeSTE``), computed with fewer temporaries. When autograd records nothing (``no_grad``/``inference_mode``,
    or neither input needs a gradient) the values come from one new tensor and in-place ops: the composite's forward
    value ``(round(v) - v) + v`` is exactly ``round(v)`` for ``|v| < 2**23``, which clamping to k <= 8 bit codes
    guarantees. Evaluation then makes one activation-sized tensor per call instead of six.

    >>> x, s = torch.tensor([0.26, -3.0, 0.74]), torch.tensor(0.5)
    >>> fake_quantize(x, s, -2, 1).tolist()
    [0.5, -1.0, 0.5]
    """
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return _FakeQuantizeSTE.apply(x, scale, qn, qp)
    if (x.numel() > _CHUNK and x.device.type == "cpu" and scale.numel() == 1 and x.is_contiguous()
            and torch.result_type(x, scale) == x.dtype and not (_is_batched is not None and _is_batched(x))):
        # a large CPU tensor in cache-sized pieces: the four elementwise passes read it from memory once, not four
        # times (the same operations on each entry, so the same values)
        out = torch.empty_like(x)
        src, dst, s = x.view(-1), out.view(-1), scale.reshape(())
        for start in range(0, src.numel(), _CHUNK):
            torch.div(src[start:start + _CHUNK], s, out=dst[start:start + _CHUNK]).clamp_(qn, qp).round_().mul_(s)
        return out
    v = torch.div(x, scale)
    if _is_batched is not None and _is_batched(v):  # inside torch.func.vmap, clamp_ has no batching rule
        return v.clamp_min_(qn).clamp_max_(qp).round_().mul_(scale)
    return v.clamp_(qn, qp).round_().mul_(scale)


_CHUNK = 1 << 17  # entries per piece of fake_quantize's CPU path (512 KiB of float32: stays in a core's cache)


_is_batched = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (LSQ's step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale


class Quantizer(nn.Module):
    """Base class: ``quantize(x, bits, is_activation)`` returns ``Quantized``; calling the module returns the value.

    What the class can do is data that the typed config (``QuantConfig.validated``) and ``quantize_model`` read:
    ``VALID_BITS``, the bit widths it stores; ``PER_CHANNEL``, whether it takes per-channel scales; ``CLIPS``,
    whether it takes ``max_abs`` (the weight clipping bound, ``train.clip_weights``); ``GROUPS``, whether it takes
    group-wise weight scales (``group_size``: see ``weight_groups``); ``STORES_ZERO_POINT``, whether its integer
    encodings store a zero point (``fault.target=zero_points`` exposes its bits).
    """

    VALID_BITS: tuple[int, ...] = VALID_BITS
    PER_CHANNEL: bool = True
    CLIPS: bool = False
    GROUPS: bool = False
    STORES_ZERO_POINT: bool = False

    def __init__(self, per_channel: bool = False, group_size: int | None = None) -> None:
        super().__init__()
        if per_channel and not self.PER_CHANNEL:  # its own invariant (one range); the user's rule is in config.py
            raise ValueError(f"{type(self).__name__} has no per-channel scales")
        if group_size is not None and not (self.GROUPS and group_size >= 1):
            raise ValueError(f"{type(self).__name__} takes no group size {group_size}")
        self.per_channel = per_channel
        self.group_size = group_size

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> torch.Tensor:
        return self.quantize(x, bits, is_activation).value

    def _grouped(self, x: torch.Tensor, is_activation: bool) -> torch.Tensor:
        """``x`` viewed as ``(rows, groups, entries)`` for group-wise weight scales (``weight_groups``), else ``x``."""
        if self.group_size is None or is_activation or x.dim() < 2:
            return x
        return x.reshape(weight_groups(tuple(x.shape), self.group_size))

    def _reduce_shape(self, x: torch.Tensor, is_activation: bool) -> tuple[int, ...]:
        """Shape of a scale: one per output channel (dim 0) for per-channel weights, one per group of a grouped view
        (``_grouped``), else a scalar."""
        if self.group_size is not None and not is_activation and x.dim() == 3:
            return x.shape[:2] + (1,)
        if self.per_channel and not is_activation and x.dim() > 1:
            return (x.shape[0],) + (1,) * (x.dim() - 1)
        return (1,) * x.dim()

    @staticmethod
    def _encoding(x: torch.Tensor, bits: int, scale: torch.Tensor, signed: bool, zero_point: int | torch.Tensor = 0,
                  shape: torch.Size | None = None) -> Encoding:
        """The record of ``x`` quantized with ``scale``; ``shape``: the weight's own shape when ``x`` is its grouped
        view (the scale is then stored as ``(rows, groups)``, flat order = group order)."""
        group = x.numel() // scale.numel() if scale.numel() > 1 else 0
        if shape is not None and scale.numel() > 1:
            scale = scale.reshape(scale.shape[:2])
            zero_point = zero_point.reshape(scale.shape) if isinstance(zero_point, torch.Tensor) else zero_point
        return Encoding(bits=bits, scale=scale.detach(), zero_point=zero_point, signed=signed, group=group,
                        shape=None if shape is None or scale.numel() == 1 else tuple(shape))


def weight_groups(shape: tuple[int, ...], group_size: int) -> tuple[int, int, int]:
    """``(rows, groups per row, entries per group)`` of a weight of ``shape`` at ``quant.group_size``.

    A row is everything after dim 0, flattened row-major (Linear ``[out, in]``: the ``in`` entries; Conv ``[out,
    in, kh, kw]``: the ``in * kh * kw`` entries, kernel positions innermost). Groups are equal: each holds the
    largest number of entries ``<= group_size`` that divides the row, so a row shorter than ``group_size`` is one
    group, and scale ``j`` governs flat entries ``[j * entries, (j + 1) * entries)``.

    >>> weight_groups((10, 64), 32), weight_groups((16, 1, 3, 3), 32), weight_groups((32, 16, 3, 3), 32)
    ((10, 2, 32), (16, 1, 9), (32, 6, 24))
    """
    rows = shape[0]
    row = math.prod(shape[1:])
    entries = next(g for g in range(min(row, group_size), 0, -1) if row % g == 0) if row else 1
    return rows, row // entries, entries


@QUANTIZERS.register("lsq")
class LSQQuantizer(Quantizer):
    """Learned step size quantization (Esser et al., 2019), with the paper's gradient scaling.

    The step size is initialised on the first call to ``2 * mean(|x|) / sqrt(Qp)``; activations that are
    non-negative at that call use unsigned codes.

    >>> q = LSQQuantizer()
    >>> w_q, enc = q.quantize(torch.randn(16, 8), 4)
    >>> codes = enc.codes(w_q)
    >>> bool(codes.min() >= -8 and codes.max() <= 7), enc.bits, enc.signed
    (True, 4, True)
    """

    GROUPS = True

    def __init__(self, per_channel: bool = False, group_size: int | None = None) -> None:
        super().__init__(per_channel, group_size)
        self.step = nn.Parameter(torch.ones(0))
        self.register_buffer("signed", torch.tensor(True))
        self.register_buffer("initialized", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch signature
        key = prefix + "step"
        if key in state_dict and state_dict[key].shape != self.step.shape:
            self.step = nn.Parameter(torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor, bits: int, is_activation: bool) -> None:
        signed = bool(x.min() < 0) if is_activation else True
        _, qp = code_range(bits, signed)
        shape = self._reduce_shape(x, is_activation)
        mean_abs = x.abs().reshape(math.prod(shape), -1).mean(1).view(shape)
        step = (2 * mean_abs / math.sqrt(qp)).clamp_min(1e-8)
        self.step = nn.Parameter(step.to(x.dtype))
        self.signed.fill_(signed)
        self.initialized.fill_(True)

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        if bits >= 32:
            return Quantized(x, FP32)
        xs = self._grouped(x, is_activation)
        if not bool(self.initialized):
            self._initialize(xs, bits, is_activation)
        signed = bool(self.signed)
        qn, qp = code_range(bits, signed)
        per_scale = x.numel() / self.step.numel()
        step = grad_scale(self.step, 1.0 / math.sqrt(per_scale * qp))
        value = fake_quantize(xs, step, qn, qp).reshape(x.shape)
        return Quantized(value, self._encoding(xs, bits, self.step, signed, shape=x.shape if xs is not x else None))


def _amin_amax(x: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum per scale of ``shape`` (per channel, per group of a grouped view, or of the whole
    tensor) in one reading pass."""
    n = math.prod(shape)
    return torch.aminmax(x.reshape(n, -1) if n > 1 else x, dim=1 if n > 1 else None)


@QUANTIZERS.register("minmax")
class MinMaxQuantizer(Quantizer):
    """Symmetric min-max quantization: ``scale = max|x| / (2**(k-1) - 1)``, codes in the restricted range.

    Non-negative activations use unsigned codes ``[0, 2**k - 1]``.

    >>> q = MinMaxQuantizer(per_channel=True)
    >>> w = torch.tensor([[1.0, -0.5], [0.25, 0.125]])
    >>> (q(w, 8) - w).abs().max().item() < 1e-2
    True
    >>> MinMaxQuantizer(group_size=2).quantize(torch.tensor([[7.0, 1.0, 3.5, -0.5]]), 4).encoding.scale.tolist()
    [[1.0, 0.5]]
    """

    GROUPS = True

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        if bits >= 32:
            return Quantized(x, FP32)
        xs = self._grouped(x, is_activation)
        with torch.no_grad():
            shape = self._reduce_shape(xs, is_activation)
            # max|x| = max(|min x|, max x): one reading pass, no |x| tensor (min x also gives the signedness)
            lo, hi = _amin_amax(xs, shape)
            signed = bool(lo.min() < 0) if is_activation else True
            _, qp = code_range(bits, signed)
            scale = (torch.maximum(lo.abs(), hi).view(shape) / qp).clamp_min(1e-12)
        qn = -qp if signed else 0
        value = fake_quantize(xs, scale, qn, qp).reshape(x.shape)
        return Quantized(value, self._encoding(xs, bits, scale, signed, shape=x.shape if xs is not x else None))


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the identity to ``x`` in the backward pass (every entry gets its gradient)."""
    return x + (value - x).detach() if torch.is_grad_enabled() and x.requires_grad else value


@QUANTIZERS.register("affine")
class AffineQuantizer(Quantizer):
    """Asymmetric (affine) quantization: range ``[min(min x, 0), max(max x, 0)]`` per layer (or per channel),
    unsigned k-bit codes, round to nearest.

    ``scale = (hi - lo) / (2**k - 1)`` and ``zero_point = round(-lo / scale)``; stored codes ``c = clamp(round(x /
    scale) + zero_point, 0, 2**k - 1)`` and ``value = (c - zero_point) * scale``. The range always holds 0 and the
    data (a one-signed tensor keeps its whole range), so the zero point is a code and no entry is clipped; the
    gradient passes straight through to every weight (the rounded zero point may put one end of the range half a
    step outside the grid: those entries round to the end code but keep their gradient).

    >>> q = AffineQuantizer()
    >>> value, enc = q.quantize(torch.tensor([-0.5, 0.0, 0.5, 1.0]), 2)   # scale 1.5 / 3 = 0.5, zero point 1
    >>> enc.codes(value).tolist(), enc.zero_point, enc.signed
    ([0, 1, 2, 3], 1, False)
    >>> x = torch.tensor([0.2, 0.37, 0.9])                                 # one-signed: range [0, 0.9]
    >>> bool((q(x, 8) - x).abs().max() <= 0.9 / 255 / 2)
    True

    With ``group_size`` every group of a weight row has its own range, scale and zero point (a tensor laid out as
    the scales):

    >>> enc = AffineQuantizer(group_size=2).quantize(torch.tensor([[-0.5, 1.0, 0.0, 3.0]]), 2).encoding
    >>> enc.scale.tolist(), enc.zero_point.tolist()
    ([[0.5, 1.0]], [[1, 0]])
    """

    PER_CHANNEL, GROUPS, STORES_ZERO_POINT = False, True, True

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        if bits >= 32:
            return Quantized(x, FP32)
        top = 2**bits - 1
        xs = self._grouped(x, is_activation)
        with torch.no_grad():
            shape = self._reduce_shape(xs, is_activation)
            lo, hi = _amin_amax(xs, shape)
            lo, hi = lo.clamp(max=0).view(shape), hi.clamp(min=0).view(shape)
            scale = ((hi - lo) / top).clamp_min(1e-12)
            zero = torch.round(-lo / scale).clamp(0, top)
            if xs is x:
                zero_point = int(zero.reshape(-1)[0])
                value = fake_quantize(x.detach(), scale, -zero_point, top - zero_point)
            else:  # one zero point per group: the same clamp-and-round with tensor bounds
                zero_point = zero.long()
                value = torch.div(xs.detach(), scale).clamp_(-zero, top - zero).round_().mul_(scale).reshape(x.shape)
        return Quantized(straight_through(x, value), self._encoding(xs, bits, scale, signed=False,
                                                                    zero_point=zero_point,
                                                                    shape=x.shape if xs is not x else None))


@QUANTIZERS.register("rquant")
class RQuantizer(Quantizer):
    """Robust quantization, RQuant (Stutz et al., MLSys 2021): their
    ``ClippedAdaptiveAlternativeUnsymmetricUnsignedRoundedFixedPointQuantization``, bit for bit.

    Per tensor: clamp to ``[-max_abs, max_abs]`` (the weight clipping bound; qfi passes ``train.clip_weights`` for
    weights, none for activations), take the range ``[min, max]``, map it to [-1, 1] and store unsigned m-bit codes
    of a symmetric fixed-point grid with offset ``2**(m-1)`` and step ``1.001 / (2**(m-1) - 1)`` (``2**m - 1``
    levels; see ``RQuantEncoding``). The straight-through gradient is the identity to every weight, as theirs (they
    copy the quantized model's gradients onto the float weights).

    >>> q = RQuantizer()
    >>> value, enc = q.quantize(torch.tensor([-1.0, 0.0, 0.5, 2.0]), 2)   # 3 levels: -1, 0.5, 2
    >>> enc.codes(value).tolist(), value.tolist()
    ([1, 2, 2, 3], [-1.0, 0.5, 0.5, 2.0])
    """

    PER_CHANNEL, CLIPS = False, True

    def __init__(self, per_channel: bool = False, max_abs: float | None = None) -> None:
        super().__init__(per_channel)
        self.max_abs = None if max_abs is None else float(max_abs)

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        if bits >= 32:
            return Quantized(x, FP32)
        max_abs = None if is_activation else self.max_abs
        with torch.no_grad():
            clipped = x.detach() if max_abs is None else x.detach().clamp(-max_abs, max_abs)
            lo, hi = torch.aminmax(clipped.float())
            span = (hi.double() - lo.double()).float()  # the reference's Python-float difference, used as float32
            enc = RQuantEncoding(bits=bits, lo=lo, hi=hi, span=span, max_abs=max_abs)
            value = enc.decode(enc.codes(x), dtype=x.dtype)
        return Quantized(straight_through(x, value), enc)


class FloatQuantizer(Quantizer):
    """Storage as IEEE floats of ``FORMAT`` (sign, exponent, mantissa bits): the value is ``x`` rounded to the
    format (round to nearest even, straight-through gradient), the encoding ``float_encoding(FORMAT)``, so bit
    errors act on the float's own bits. ``bits`` must be the format's width (16 for fp16 / bf16); 32 is the fp32
    pass-through, as for every quantizer. Registered as ``fp16``, ``bf16`` and ``fp32`` (``quant=float
    quant.format=...`` picks one of them).

    >>> q = QUANTIZERS.get("bf16")()
    >>> value, enc = q.quantize(torch.tensor([1.0, 1.0 + 2**-9, 3.14159]), 16)
    >>> value.tolist(), enc.float_format, enc.bits
    ([1.0, 1.0, 3.140625], 'bf16', 16)
    """

    FORMAT = "fp32"

    def quantize(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> Quantized:
        if bits >= 32:
            return Quantized(x, FP32)
        storage, _, width = FLOAT_FORMATS[self.FORMAT]
        if bits != width:
            raise QfiError(f"{self.FORMAT} stores {width}-bit values, not {bits}-bit ones")
        rounded = x.detach().to(storage).to(x.dtype)
        value = x + (rounded - x).detach() if x.requires_grad else rounded
        return Quantized(value, float_encoding(self.FORMAT))


def _float_quantizer(fmt: str) -> type[FloatQuantizer]:
    width = FLOAT_FORMATS[fmt][2]
    cls = type(f"{fmt.upper()}Quantizer", (FloatQuantizer,),
               {"FORMAT": fmt, "VALID_BITS": tuple(sorted({width, 32})), "__module__": __name__,
                "__doc__": f"IEEE {fmt} storage (see FloatQuantizer)."})
    return QUANTIZERS.register(fmt)(cls)


FP16Quantizer, BF16Quantizer, FP32Quantizer = (_float_quantizer(f) for f in ("fp16", "bf16", "fp32"))

"""Quantizers: LSQ (learned step size) and symmetric min-max, per-tensor or per-channel.

A quantizer is called as ``q(x, bits, is_activation=False)`` and returns the fake-quantized tensor
``codes * scale`` with straight-through gradients. After each call it keeps ``last_scale`` (broadcastable
to ``x``) and ``last_signed``, so that the integer codes of what it quantized are ``round(x_q / last_scale)``:
signed codes live in k-bit two's complement ``[-2**(k-1), 2**(k-1) - 1]``, unsigned ones in ``[0, 2**k - 1]``.
``bits >= 32`` is a float pass-through.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.registry import Registry

QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantizer")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 32)


def check_bits(bits: int, what: str = "bit width") -> int:
    """Return ``bits`` if it is 2..8 or 32, else raise a one-line QfiError.

    >>> check_bits(4)
    4
    """
    if int(bits) != bits or int(bits) not in VALID_BITS:
        raise QfiError(f"{what} must be 2..8 or 32 (float pass-through), got {bits}")
    return int(bits)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest integer code of a k-bit quantizer.

    >>> code_range(8, True), code_range(4, False)
    ((-128, 127), (0, 15))
    """
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


@functools.lru_cache(maxsize=None)
def _clamp_passes_bounds() -> tuple[bool, bool]:
    """Whether autograd's clamp passes the gradient at x == min and at x == max (torch releases differ)."""
    with torch.enable_grad():
        x = torch.tensor([0.0, 1.0], requires_grad=True)
        (grad,) = torch.autograd.grad(torch.clamp(x, 0, 1).sum(), x)
    return bool(grad[0] == 1), bool(grad[1] == 1)


class _FakeQuantizeSTE(torch.autograd.Function):
    """``round_ste(clamp(x / scale, qn, qp)) * scale`` as one autograd node.

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

    Same values and gradients as ``round_ste(torch.clamp(x / scale, qn, qp)) * scale``, computed with fewer
    temporaries. When autograd records nothing (``no_grad``/``inference_mode``, or neither input needs a
    gradient) the values come from one new tensor and in-place ops: ``round_ste``'s forward value
    ``(round(v) - v) + v`` is exactly ``round(v)`` for ``|v| < 2**23``, which clamping to k <= 8 bit codes
    guarantees. Evaluation then makes one activation-sized tensor per call instead of six.

    >>> x, s = torch.tensor([0.26, -3.0, 0.74]), torch.tensor(0.5)
    >>> fake_quantize(x, s, -2, 1).tolist()
    [0.5, -1.0, 0.5]
    """
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return _FakeQuantizeSTE.apply(x, scale, qn, qp)
    v = torch.div(x, scale)
    if _is_batched is not None and _is_batched(v):  # inside torch.func.vmap, clamp_ has no batching rule
        return v.clamp_min_(qn).clamp_max_(qp).round_().mul_(scale)
    return v.clamp_(qn, qp).round_().mul_(scale)


_is_batched = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (LSQ's step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale


class Quantizer(nn.Module):
    """Base class: remembers the scale and signedness of its last call."""

    def __init__(self, per_channel: bool = False) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.last_scale: torch.Tensor | None = None
        self.last_signed = True

    def _reduce_shape(self, x: torch.Tensor, is_activation: bool) -> tuple[int, ...]:
        """Shape of a scale: one per output channel (dim 0) for per-channel weights, else a scalar."""
        if self.per_channel and not is_activation and x.dim() > 1:
            return (x.shape[0],) + (1,) * (x.dim() - 1)
        return (1,) * x.dim()

    def codes(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (int64) and scale of ``x``: ``codes * scale`` is what ``forward`` returns.

        >>> q = MinMaxQuantizer()
        >>> codes, scale = q.codes(torch.tensor([-1.0, 0.5, 1.0]), 8)
        >>> codes.tolist()
        [-127, 64, 127]
        """
        with torch.no_grad():
            x_q = self(x, bits, is_activation=is_activation)
            return torch.round(x_q / self.last_scale).long(), self.last_scale


@QUANTIZERS.register("lsq")
class LSQQuantizer(Quantizer):
    """Learned step size quantization (Esser et al., 2019), with the paper's gradient scaling.

    The step size is initialised on the first call to ``2 * mean(|x|) / sqrt(Qp)``; activations that are
    non-negative at that call use unsigned codes.

    >>> q = LSQQuantizer()
    >>> w = torch.randn(16, 8)
    >>> w_q = q(w, 4)
    >>> codes = torch.round(w_q / q.last_scale)
    >>> bool(codes.min() >= -8 and codes.max() <= 7)
    True
    """

    def __init__(self, per_channel: bool = False) -> None:
        super().__init__(per_channel)
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
        if len(shape) and shape[0] > 1:
            mean_abs = x.abs().flatten(1).mean(1).view(shape)
        else:
            mean_abs = x.abs().mean().view(shape)
        step = (2 * mean_abs / math.sqrt(qp)).clamp_min(1e-8)
        self.step = nn.Parameter(step.to(x.dtype))
        self.signed.fill_(signed)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> torch.Tensor:
        if bits >= 32:
            return x
        if not bool(self.initialized):
            self._initialize(x, bits, is_activation)
        signed = bool(self.signed)
        qn, qp = code_range(bits, signed)
        per_scale = x.numel() / self.step.numel()
        step = grad_scale(self.step, 1.0 / math.sqrt(per_scale * qp))
        x_q = fake_quantize(x, step, qn, qp)
        self.last_scale, self.last_signed = self.step.detach(), signed
        return x_q


@QUANTIZERS.register("minmax")
class MinMaxQuantizer(Quantizer):
    """Symmetric min-max quantization: ``scale = max|x| / (2**(k-1) - 1)``, codes in the restricted range.

    Non-negative activations use unsigned codes ``[0, 2**k - 1]``.

    >>> q = MinMaxQuantizer(per_channel=True)
    >>> w = torch.tensor([[1.0, -0.5], [0.25, 0.125]])
    >>> (q(w, 8) - w).abs().max().item() < 1e-2
    True
    """

    def forward(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> torch.Tensor:
        if bits >= 32:
            return x
        with torch.no_grad():
            shape = self._reduce_shape(x, is_activation)
            # max|x| = max(|min x|, max x): one reading pass, no |x| tensor (min x also gives the signedness)
            lo, hi = torch.aminmax(x.flatten(1) if len(shape) and shape[0] > 1 else x,
                                   dim=1 if len(shape) and shape[0] > 1 else None)
            signed = bool(lo.min() < 0) if is_activation else True
            _, qp = code_range(bits, signed)
            scale = (torch.maximum(lo.abs(), hi).view(shape) / qp).clamp_min(1e-12)
        qn = -qp if signed else 0
        x_q = fake_quantize(x, scale, qn, qp)
        self.last_scale, self.last_signed = scale, signed
        return x_q

"""QuanConv2d and QuanLinear: layers that compute on quantized weights (and activations).

A layer calls ``self.quan_w_fn.quantize(weight, wbits)`` and, for its input, ``self.quan_a_fn.quantize(x, abits,
is_activation=True)``; each returns ``Quantized(value, encoding)``. Two explicit slots let fault injection in without
touching the quantizers: ``weight_fault`` and ``input_fault``, each ``None`` or a callable ``(value, encoding) ->
value`` that the layer applies to the quantized tensor (``qfi_cli.faults.FaultInjector`` sets and clears them).

For SAM, while ``keep_quantized`` is set the layer appends the clean quantized weight of each training forward to
``quantized_weights`` (gradients retained; a fault hook's straight-through output passes its gradient to it) and
adds ``epsilon`` to the weight it computes with. ``frozen_weight``, when set, replaces the quantizer call:
evaluation quantizes once and reuses the result for every batch (see ``frozen_weights``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from qfi_cli.quant.encoding import Encoding

FaultHook = Callable[[torch.Tensor, Encoding], torch.Tensor]


class QuantizedLayerMixin:
    """What QuanConv2d and QuanLinear share: quantizers, bit widths, fault slots, SAM's epsilon, frozen weights."""

    quan_w_fn: nn.Module
    quan_a_fn: nn.Module
    wbits: int
    abits: int

    def _init_quant(self, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int) -> None:
        self.quan_w_fn, self.quan_a_fn = quan_w_fn, quan_a_fn
        self.wbits, self.abits = int(wbits), int(abits)
        self.weight_fault: Optional[FaultHook] = None
        self.input_fault: Optional[FaultHook] = None
        self.epsilon: torch.Tensor | None = None
        self.keep_quantized = False
        self.quantized_weights: list[torch.Tensor] = []
        self.frozen_weight: torch.Tensor | None = None
        self.frozen_encoding: Encoding | None = None

    def quantize_weight_clean(self) -> tuple[torch.Tensor, Encoding]:
        """Q(w) and its encoding, without faults."""
        return self.quan_w_fn.quantize(self.weight, self.wbits)

    def weight_with_faults(self) -> torch.Tensor:
        """Q(w) with this layer's weight faults (when a hook is set), before SAM's epsilon."""
        w_q, encoding = self.quantize_weight_clean()
        if self.keep_quantized and self.training and w_q.requires_grad:
            w_q.retain_grad()
            self.quantized_weights.append(w_q)  # the clean Q(w): SAM ascends along its gradient (seed's solution C)
        return w_q if self.weight_fault is None else self.weight_fault(w_q, encoding)

    def quantize_weight(self) -> torch.Tensor:
        """The weight this forward computes with: the frozen weight or Q(w) (maybe faulty), plus SAM's epsilon."""
        w = self.frozen_weight if self.frozen_weight is not None else self.weight_with_faults()
        return w if self.epsilon is None else w + self.epsilon

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.abits >= 32:
            return x
        x_q, encoding = self.quan_a_fn.quantize(x, self.abits, is_activation=True)
        return x_q if self.input_fault is None else self.input_fault(x_q, encoding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wbits={self.wbits}, abits={self.abits}"


class QuanConv2d(QuantizedLayerMixin, nn.Conv2d):
    """A Conv2d on quantized weights and inputs; keeps bias, stride, padding, dilation and groups.

    >>> from qfi_cli.quant.quantizers import LSQQuantizer
    >>> conv = QuanConv2d.from_float(nn.Conv2d(1, 4, 3, padding=1), LSQQuantizer(), LSQQuantizer(), 4, 8)
    >>> conv(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_state_dict(conv.state_dict())
        layer._init_quant(quan_w_fn, quan_a_fn, wbits, abits)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantize_weight(), self.bias)


class QuanLinear(QuantizedLayerMixin, nn.Linear):
    """A Linear layer on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> fc = QuanLinear.from_float(nn.Linear(8, 3), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32)
    >>> fc(torch.randn(5, 8)).shape
    torch.Size([5, 3])
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        layer._init_quant(quan_w_fn, quan_a_fn, wbits, abits)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantize_weight(), self.bias)


QUANT_LAYERS = (QuanConv2d, QuanLinear)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantizedLayerMixin]]:
    """The (name, module) pairs of every quantized layer, in module order.

    >>> quantized_layers(nn.Sequential(nn.Linear(2, 2)))
    []
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Quantize every layer's weight once (clean) and reuse it inside the block; ``frozen_encoding`` says how
    it is stored. Fault injectors change these frozen weights in place for one trial and undo it
    (``FaultInjector.trial``), so the block quantizes once per evaluation, whatever the number of trials.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> fc = QuanLinear.from_float(nn.Linear(8, 3), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32).eval()
    >>> with frozen_weights(fc):
    ...     fc.frozen_weight is not None, fc.frozen_encoding.bits
    (True, 8)
    """
    layers = [m for _, m in quantized_layers(model)]
    try:
        with torch.no_grad():
            for m in layers:
                m.frozen_weight = None
                w_q, m.frozen_encoding = m.quantize_weight_clean()
                m.frozen_weight = w_q.detach().clone()  # ours to change in place (a pass-through returns the weight)
        yield
    finally:
        for m in layers:
            m.frozen_weight = None
            m.frozen_encoding = None

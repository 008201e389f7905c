"""QuanConv2d and QuanLinear: layers that compute on quantized weights (and activations).

Each layer calls ``self.quan_w_fn(weight, wbits)`` and, for its input, ``self.quan_a_fn(x, abits,
is_activation=True)``; a fault injector may wrap either function (see ``qfi_cli.faults``). For SAM the
layer keeps the quantized weight of the last training forward in ``quantized_weight`` (its ``.grad`` is
retained) and adds ``epsilon`` to it while SAM's second pass runs. ``frozen_weight``, when set, replaces
the quantizer call: evaluation quantizes (and injects) once per trial and reuses the result for every batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class QuantizedLayerMixin:
    """What QuanConv2d and QuanLinear share: quantizers, bit widths, SAM's epsilon, frozen weights."""

    quan_w_fn: nn.Module
    quan_a_fn: nn.Module
    wbits: int
    abits: int

    def _init_quant(self, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int) -> None:
        self.quan_w_fn, self.quan_a_fn = quan_w_fn, quan_a_fn
        self.wbits, self.abits = int(wbits), int(abits)
        self.epsilon: torch.Tensor | None = None
        self.frozen_weight: torch.Tensor | None = None
        self.quantized_weight: torch.Tensor | None = None

    def quantize_weight(self) -> torch.Tensor:
        """The weight this forward computes with: Q(w) (maybe faulty), plus SAM's epsilon when set."""
        if self.frozen_weight is not None:
            w_q = self.frozen_weight
        else:
            w_q = self.quan_w_fn(self.weight, self.wbits)
            if self.training and w_q.requires_grad:
                # With an injector attached, SAM must see the clean quantized weight (the seed's solution C).
                clean = self.__dict__.pop("clean_weight", None)
                self.quantized_weight = clean if clean is not None else w_q
                self.quantized_weight.retain_grad()
        if self.epsilon is not None:
            w_q = w_q + self.epsilon
        return w_q

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.abits >= 32 else self.quan_a_fn(x, self.abits, is_activation=True)

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
    """Quantize (and, with an injector attached, inject) every layer's weight once; reuse it inside the block.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> fc = QuanLinear.from_float(nn.Linear(8, 3), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32).eval()
    >>> with frozen_weights(fc):
    ...     fc.frozen_weight is not None
    True
    """
    layers = [m for _, m in quantized_layers(model)]
    try:
        with torch.no_grad():
            for m in layers:
                m.frozen_weight = None
                m.frozen_weight = m.quan_w_fn(m.weight, m.wbits).detach()
        yield
    finally:
        for m in layers:
            m.frozen_weight = None

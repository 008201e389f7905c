"""Quantized layers, one mixin per concern (as Brevitas): weight quantization, input quantization, fault slots.

* ``WeightQuantMixin``: ``quan_w_fn`` at ``wbits``; ``quantize_weight_clean()`` gives ``Quantized(value,
  encoding)``; ``frozen_weight`` / ``frozen_encoding``, when set, replace the quantizer call (evaluation quantizes
  once and reuses the result, see ``frozen_weights``). Two public hooks let an optimizer in without attributes of its
  own on the layer (SAM keeps its state in ``SAM.state``): ``register_quantized_hook(fn)`` sees the clean Q(w) of
  every forward that quantizes, ``register_weight_hook(fn)`` replaces the weight a forward computes with.
* ``InputQuantMixin``: ``quan_a_fn`` at ``abits`` on the layer's input (``abits >= 32`` leaves it float).
* ``FaultSlotMixin``: two explicit slots, ``weight_fault`` and ``input_fault``, each ``None`` or a callable
  ``(value, encoding) -> value`` applied to the quantized tensor (``qfi_cli.faults.FaultInjector`` sets and clears
  them).

``QuantizedLayerMixin`` composes them: the weight is the frozen weight or Q(w) (hooks see it), maybe faulty, then
the weight hooks. The float-to-quantized mapping is data: ``QUANTIZED_TYPES`` (float type -> quantized type, by
exact type), filled by ``@quantizes(float_type)``; a new layer type is one class here or in ``layers_zoo``.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from qfi_cli.quant.encoding import Encoding, Quantized
from qfi_cli.quant.torch_ao import AoLayer, ao_layer

FaultHook = Callable[[torch.Tensor, Encoding], torch.Tensor]
QuantizedHook = Callable[[nn.Module, torch.Tensor], None]
WeightHook = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class WeightQuantMixin:
    """Weight quantization: the quantizer, the stored width, the frozen weight, and the hooks on the weight."""

    quan_w_fn: nn.Module
    wbits: int
    weight: torch.Tensor

    def _init_weight_quant(self, quan_w_fn: nn.Module, wbits: int) -> None:
        self.quan_w_fn, self.wbits = quan_w_fn, int(wbits)
        self.frozen_weight: torch.Tensor | None = None
        self.frozen_encoding: Encoding | None = None
        self._quantized_hooks: OrderedDict[int, QuantizedHook] = OrderedDict()
        self._weight_hooks: OrderedDict[int, WeightHook] = OrderedDict()

    def quantize_weight_clean(self) -> Quantized:
        """Q(w) and its encoding, without faults (no hook sees it)."""
        return self.quan_w_fn.quantize(self.weight, self.wbits)

    def commit_frozen(self) -> None:
        """After a trial wrote into ``frozen_weight``: nothing to do, the forward computes with it (a torch.ao
        layer repacks, see ``quant.torch_ao``)."""

    def restore_frozen(self) -> None:
        """After a trial's writes into ``frozen_weight`` were undone: nothing to do (a torch.ao layer repacks)."""

    def register_quantized_hook(self, hook: QuantizedHook) -> RemovableHandle:
        """``hook(layer, w_q)`` sees the clean Q(w) of every forward that quantizes (not a frozen weight), before
        faults; returns the handle that removes it.

        >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
        >>> fc, seen = QuanLinear.from_float(nn.Linear(2, 1), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32), []
        >>> handle = fc.register_quantized_hook(lambda layer, w_q: seen.append(w_q.shape))
        >>> _ = fc(torch.ones(1, 2)); handle.remove(); _ = fc(torch.ones(1, 2)); seen
        [torch.Size([1, 2])]
        """
        handle = RemovableHandle(self._quantized_hooks)
        self._quantized_hooks[handle.id] = hook
        return handle

    def register_weight_hook(self, hook: WeightHook) -> RemovableHandle:
        """``hook(layer, w) -> w'``: the weight the forward computes with becomes ``w'`` (``w`` is the frozen weight or
        Q(w), after faults); returns the handle that removes it.

        >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
        >>> fc = QuanLinear.from_float(nn.Linear(2, 1, bias=False), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32)
        >>> handle = fc.register_weight_hook(lambda layer, w: torch.zeros_like(w))
        >>> fc(torch.ones(1, 2)).item()
        0.0
        """
        handle = RemovableHandle(self._weight_hooks)
        self._weight_hooks[handle.id] = hook
        return handle

    def _quantized_seen(self, w_q: torch.Tensor) -> None:
        for hook in self._quantized_hooks.values():
            hook(self, w_q)

    def _hooked_weight(self, w: torch.Tensor) -> torch.Tensor:
        for hook in self._weight_hooks.values():
            w = hook(self, w)
        return w


class InputQuantMixin:
    """Input (activation) quantization: the quantizer and its width (``abits >= 32``: float inputs)."""

    quan_a_fn: nn.Module
    abits: int

    def _init_input_quant(self, quan_a_fn: nn.Module, abits: int) -> None:
        self.quan_a_fn, self.abits = quan_a_fn, int(abits)

    def quantize_input_clean(self, x: torch.Tensor) -> Quantized:
        """Q(x) and its encoding, without faults."""
        return self.quan_a_fn.quantize(x, self.abits, is_activation=True)


class FaultSlotMixin:
    """The two fault slots, ``weight_fault`` and ``input_fault``: ``None`` or ``(value, encoding) -> value``."""

    def _init_fault_slots(self) -> None:
        self.weight_fault: Optional[FaultHook] = None
        self.input_fault: Optional[FaultHook] = None

    def fault_weight(self, w_q: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        """``w_q`` through the weight slot (unchanged when it is empty)."""
        return w_q if self.weight_fault is None else self.weight_fault(w_q, encoding)

    def fault_input(self, x_q: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        """``x_q`` through the input slot (unchanged when it is empty)."""
        return x_q if self.input_fault is None else self.input_fault(x_q, encoding)


class QuantizedLayerMixin(WeightQuantMixin, InputQuantMixin, FaultSlotMixin):
    """A quantized layer: weight quantization, input quantization and fault slots composed."""

    def _init_quant(self, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int) -> None:
        self._init_weight_quant(quan_w_fn, wbits)
        self._init_input_quant(quan_a_fn, abits)
        self._init_fault_slots()

    def weight_with_faults(self) -> torch.Tensor:
        """Q(w) (the quantized hooks see it clean) with this layer's weight faults, before the weight hooks."""
        w_q, encoding = self.quantize_weight_clean()
        self._quantized_seen(w_q)
        return self.fault_weight(w_q, encoding)

    def quantize_weight(self) -> torch.Tensor:
        """The weight this forward computes with: the frozen weight or Q(w) (maybe faulty), through the weight hooks."""
        return self._hooked_weight(self.frozen_weight if self.frozen_weight is not None else self.weight_with_faults())

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input this forward computes with: Q(x) (maybe faulty), or ``x`` itself at 32 bits."""
        if self.abits >= 32:
            return x
        return self.fault_input(*self.quantize_input_clean(x))

    def _adopt(self, module: nn.Module, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        self.load_state_dict(module.state_dict())
        self._init_quant(quan_w_fn, quan_a_fn, wbits, abits)
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wbits={self.wbits}, abits={self.abits}"


# float type -> its quantized twin, by exact type (a subclass of nn.Conv2d is not a Conv2d here)
QUANTIZED_TYPES: dict[type[nn.Module], type[QuantizedLayerMixin]] = {}


def quantizes(float_type: type[nn.Module]) -> Callable[[type], type]:
    """Register the decorated class as the quantized twin of ``float_type`` (one entry of ``QUANTIZED_TYPES``).
    The class provides ``from_float(module, quan_w_fn, quan_a_fn, wbits, abits)``.

    >>> QUANTIZED_TYPES[nn.Linear].__name__, QUANTIZED_TYPES[nn.Conv2d].__name__
    ('QuanLinear', 'QuanConv2d')
    """
    def add(cls: type) -> type:
        if float_type in QUANTIZED_TYPES:
            raise ValueError(f"{float_type.__name__} has a quantized twin already: {QUANTIZED_TYPES[float_type]}")
        QUANTIZED_TYPES[float_type] = cls
        return cls

    return add


class QuanConvMixin(QuantizedLayerMixin):
    """What every quantized ConvNd shares (the constructor arguments and ``_conv_forward`` of torch's ConvNd)."""

    @classmethod
    def from_float(cls, conv: nn.Module, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        return layer._adopt(conv, quan_w_fn, quan_a_fn, wbits, abits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantize_weight(), self.bias)


@quantizes(nn.Conv2d)
class QuanConv2d(QuanConvMixin, nn.Conv2d):
    """A Conv2d on quantized weights and inputs; keeps bias, stride, padding, dilation and groups.

    >>> from qfi_cli.quant.quantizers import LSQQuantizer
    >>> conv = QuanConv2d.from_float(nn.Conv2d(1, 4, 3, padding=1), LSQQuantizer(), LSQQuantizer(), 4, 8)
    >>> conv(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """


@quantizes(nn.Linear)
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
        return layer._adopt(linear, quan_w_fn, quan_a_fn, wbits, abits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantize_weight(), self.bias)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantizedLayerMixin | AoLayer]]:
    """The (name, layer) pairs of every quantized layer, in module order: qfi's own layers, and the stored weights
    of torch.ao quantized modules (``quant.torch_ao.AoLayer``).

    >>> quantized_layers(nn.Sequential(nn.Linear(2, 2)))
    []
    """
    found = []
    for name, m in model.named_modules():
        layer = m if isinstance(m, QuantizedLayerMixin) else ao_layer(m)
        if layer is not None:
            found.append((name, layer))
    return found


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

"""Models quantized by torch.ao (eager ``convert`` or FX ``convert_fx``): their stored int8 weights as fault layers.

A torch.ao quantized module (``torch.ao.nn.quantized`` Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, their dynamic
and fused intrinsic subclasses) keeps its weight as a qint8 (or quint8) tensor inside packed params:
``module.weight()`` unpacks it, ``module.set_weight_bias(w, b)`` repacks. ``AoLayer`` shows such a module to the
fault machinery as one more quantized layer (``quantized_layers`` lists it): ``wbits`` 8, ``weight`` the quantized
tensor, and inside ``frozen_weights`` a ``frozen_weight`` holding the stored integer codes (``int_repr()``, as
float32) with an ``Encoding`` of scale 1 and zero point 0, so a stored pattern is the code's own 8 bits (two's
complement for qint8, unsigned for quint8). A trial writes its faulty codes there, ``commit_frozen()`` repacks the
module from them (the module's own scales and zero points), ``restore_frozen()`` puts back the very packed params
object the trial started from (bit-identical, no repack). Only layers a trial touches are repacked.

torch.ao modules compute with their packed weights only: faults are per trial on the stored weights
(``fault.target=weights``, ``fault.persistence=trial``, not in training); ``check_fault_modes`` refuses the rest.

>>> import torch.ao.quantization as tq
>>> net = tq.QuantWrapper(nn.Linear(4, 2)).eval()
>>> net.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
>>> _ = tq.prepare(net, inplace=True)(torch.randn(8, 4)); _ = tq.convert(net, inplace=True)
>>> layer = ao_layer(net.module); layer.wbits, layer.weight.shape, is_torch_ao(net)
(8, torch.Size([2, 4]), True)
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.quant.encoding import Encoding, Quantized

AO_LABEL = "int8 (torch.ao)"  # the stored widths label of a torch.ao model
AO_QUANTIZER = "torch.ao"  # the quantizer name its results carry
_AO_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                "torch.nn.intrinsic.quantized")


def _weight_types() -> tuple[type, ...]:
    """The torch.ao module types whose stored weight ``AoLayer`` exposes (subclasses included)."""
    import torch.ao.nn.quantized as nnq
    from torch.ao.nn.quantized.modules.conv import _ConvNd

    return (nnq.Linear, _ConvNd)  # Linear: dynamic and fused LinearReLU too; _ConvNd: Conv*/ConvTranspose*, fused


def is_torch_ao(model: nn.Module) -> bool:
    """Whether ``model`` holds torch.ao quantized modules (a converted model: qfi does not quantize it again).

    >>> is_torch_ao(nn.Sequential(nn.Linear(2, 2)))
    False
    """
    return any(type(m).__module__.startswith(_AO_PACKAGES) for m in model.modules())


def ao_uncovered(model: nn.Module) -> list[str]:
    """``name (Type)`` of the torch.ao modules holding stored weights that no ``AoLayer`` exposes (quantized
    Embedding, EmbeddingBag, LSTM, GRU ...): they compute on their int8 weights and no fault reaches them.

    >>> ao_uncovered(nn.Sequential(nn.Linear(2, 2)))
    []
    """
    covered = _weight_types()
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if type(m).__module__.startswith(_AO_PACKAGES) and not isinstance(m, covered)
            and (callable(getattr(m, "weight", None)) or hasattr(m, "_all_weight_values"))]


class AoLayer:
    """One torch.ao quantized module's stored weight, as the fault injector sees a quantized layer."""

    wbits = 8
    abits = 32  # the inputs torch.ao quantizes are not exposed to faults

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.weight = module.weight()  # the quantized weight (its shape and size; refreshed by frozen_weights)
        if self.weight.dtype not in (torch.qint8, torch.quint8):
            raise QfiError(f"{type(module).__name__} stores {self.weight.dtype} weights: qfi faults qint8 / quint8")
        self.frozen_weight: torch.Tensor | None = None
        self.frozen_encoding: Encoding | None = None
        self.weight_fault = None  # the injector's slots: torch.ao's forward never calls them
        self.input_fault = None
        self._packed = None

    @property
    def training(self) -> bool:
        return self.module.training

    def _holder(self) -> object:
        """The object whose ``_packed_params`` attribute is the packed weight (Linear wraps it once more)."""
        packed = self.module._packed_params
        return packed if isinstance(packed, nn.Module) else self.module

    def quantize_weight_clean(self) -> Quantized:
        """The stored codes (float32, the weight's shape) and their encoding: scale 1, zero point 0, 8 bits; keeps
        the packed params that ``restore_frozen`` puts back."""
        self.weight = self.module.weight()
        self._packed = self._holder()._packed_params
        codes = self.weight.int_repr().to(torch.float32)
        return Quantized(codes, Encoding(bits=8, scale=torch.tensor(1.0), signed=self.weight.dtype == torch.qint8))

    def commit_frozen(self) -> None:
        """Repack the module from ``frozen_weight``'s codes (after a trial wrote its faults there)."""
        w = self.weight
        codes = self.frozen_weight.to(torch.int8 if w.dtype == torch.qint8 else torch.uint8)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            new = torch._make_per_channel_quantized_tensor(codes, w.q_per_channel_scales(),
                                                           w.q_per_channel_zero_points(), w.q_per_channel_axis())
        else:
            new = torch._make_per_tensor_quantized_tensor(codes, w.q_scale(), w.q_zero_point())
        self.module.set_weight_bias(new, self.module.bias())

    def restore_frozen(self) -> None:
        """Put back the packed params the trial started from (the very object: bit-identical)."""
        setattr(self._holder(), "_packed_params", self._packed)


_ADAPTERS: "weakref.WeakKeyDictionary[nn.Module, AoLayer]" = weakref.WeakKeyDictionary()


def ao_layer(module: nn.Module) -> AoLayer | None:
    """The ``AoLayer`` of a torch.ao weight module (one per module, kept while the module lives), else None."""
    if not type(module).__module__.startswith(_AO_PACKAGES) or not isinstance(module, _weight_types()):
        return None
    layer = _ADAPTERS.get(module)
    if layer is None:
        layer = _ADAPTERS[module] = AoLayer(module)
    return layer


def check_fault_modes(layers: list, config: object) -> None:
    """Refuse fault modes torch.ao layers cannot meet: they compute with their packed weights, so only per-trial
    weight faults in evaluation reach them."""
    if not any(isinstance(m, AoLayer) for _, m in layers):
        return
    if not config.weights_only or config.persistence != "trial" or config.enable_in_training:
        raise QfiError("a torch.ao int8 model takes weight faults per trial in evaluation only: use "
                       "fault.target=weights fault.persistence=trial fault.enable_in_training=false")


__all__ = ["AO_LABEL", "AO_QUANTIZER", "AoLayer", "ao_layer", "ao_uncovered", "check_fault_modes", "is_torch_ao"]

"""torch.ao int8 models to pass as ``model._target_`` to ``qfi inject-eval``: a torchvision architecture quantized
by torch.ao's FX flow (``prepare_fx``, calibration, ``convert_fx``), weights as ``torch.ao.nn.quantized`` modules
with packed int8 weights. qfi does not quantize such a model again: it flips the stored int8 codes
(``qfi_cli.quant.torch_ao``).

``torchvision_int8`` builds one at random init (or from a float ``state_dict`` file, ``weights``) and calibrates its
observers on ``calib_batches`` batches of standard normal inputs, so it needs no data set; a model of your own is
quantized the same way in your own ``_target_`` function (calibrate on your data there).

>>> net = torchvision_int8("resnet18", num_classes=10, in_channels=1, side=8, calib_batches=1)  # doctest: +SKIP
>>> type(net.fc).__module__  # doctest: +SKIP
'torch.ao.nn.quantized.modules.linear'
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from qfi_cli.errors import QfiError


def _first_conv_to(model: nn.Module, in_channels: int) -> None:
    """Give the model's first Conv2d ``in_channels`` inputs (same kernel, stride, padding), e.g. 1 for grey images."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                                    child.padding, child.dilation, child.groups,
                                                    child.bias is not None))
                return


def torchvision_int8(arch: str = "resnet18", num_classes: int = 10, in_channels: int = 3, side: int = 32,
                     weights: str | None = None, calib_batches: int = 4, batch_size: int = 32,
                     seed: int = 0) -> nn.Module:
    """``torchvision.models.<arch>`` (``weights=None``: never a download), its first conv taking ``in_channels``,
    float weights from ``weights`` (a ``state_dict`` file, read weights-only) if given, int8 by torch.ao FX on the
    machine's quantized engine, observers calibrated on ``calib_batches`` random batches of ``side`` x ``side``.

    Example: ``qfi inject-eval model._target_=qfi_cli.models.torch_ao.torchvision_int8 +model.in_channels=1
    +model.side=8 --bers 1e-5,1e-4,1e-3`` (the 8x8 digits).
    """
    import torchvision
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise QfiError("this CPU has no torch.ao quantized engine (torch.backends.quantized.supported_engines)")
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise QfiError(f"torchvision has no classification model {arch!r}")
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    _first_conv_to(model, in_channels)
    if weights is not None:
        from qfi_cli.models.user import load_float_weights

        load_float_weights(model, weights)
    model.eval()
    example = torch.randn(batch_size, in_channels, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation and observer notices
        prepared = prepare_fx(model, get_default_qconfig_mapping(torch.backends.quantized.engine), (example,))
        with torch.no_grad():
            for _ in range(calib_batches):
                prepared(torch.randn(batch_size, in_channels, side, side))
        return convert_fx(prepared)


__all__ = ["torchvision_int8"]

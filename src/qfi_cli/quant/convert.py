"""Turn a float model into a quantized one: every layer whose exact type has a row in ``QUANTIZED_TYPES``
(Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear and NonDynamicallyQuantizableLinear, Embedding, MultiheadAttention)
becomes its quantized twin; any other layer holding parameters of its own is listed and left float (norms stay float
by design, as biases do)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from qfi_cli.quant.layers import QUANTIZED_TYPES, quantized_layers
from qfi_cli.quant.quantizers import QUANTIZERS, check_bits, weight_groups
from qfi_cli.quant.torch_ao import AO_LABEL, is_torch_ao


def quantize_model(model: nn.Module, quantizer: str = "lsq", wbits: int = 8, abits: int = 8,
                   per_channel: bool = False, first_last_bits: int | None = 8,
                   max_abs: float | None = None, group_size: int | None = None) -> nn.Module:
    """Replace every layer of ``model`` whose exact type is a row of ``QUANTIZED_TYPES`` (see ``convertible``), in
    place, by its quantized twin; returns the model.

    The first and last of those layers use ``max(bits, first_last_bits)`` (at least 8 bits by default, the
    usual policy); ``first_last_bits=None`` gives them the same bit widths as the others. Float storage
    (``quantizer="fp16"``, ``"bf16"``, ``"fp32"``) takes the format's width (or 32, the fp32 pass-through).
    ``max_abs``: the weight clipping bound that a quantizer with ``CLIPS`` (``rquant``) clamps weights to before
    taking their range (Stutz et al.'s clipped RQuant; qfi passes ``train.clip_weights``); other quantizers ignore it.
    ``group_size``: group-wise weight scales (``quant.group_size``, quantizers with ``GROUPS``; see
    ``weight_groups``); activations keep one scale.

    >>> m = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)), wbits=4)
    >>> [layer.wbits for _, layer in quantized_layers(m)]
    [8, 4, 8]
    >>> m = quantize_model(nn.Sequential(nn.Linear(4, 2)), "fp16", wbits=16, abits=16)
    >>> [(layer.wbits, layer.quantize_weight_clean()[1].float_format) for _, layer in quantized_layers(m)]
    [(16, 'fp16')]
    """
    kind = QUANTIZERS.get(quantizer)
    wbits = check_bits(wbits, "weight bit width", kind.VALID_BITS)
    abits = check_bits(abits, "activation bit width", kind.VALID_BITS)
    names = convertible(model)
    weight_args = {"max_abs": max_abs} if max_abs is not None and kind.CLIPS else {}
    weight_args |= {"group_size": group_size} if group_size is not None else {}
    for i, name in enumerate(names):
        edge = first_last_bits is not None and i in (0, len(names) - 1)
        wb = max(wbits, first_last_bits) if edge else wbits
        ab = max(abits, first_last_bits) if edge else abits
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, child)
        new = QUANTIZED_TYPES[type(old)].from_float(old, kind(per_channel=per_channel, **weight_args), kind(), wb, ab)
        with torch.no_grad():
            for _, layer in quantized_layers(new):  # one, or a MultiheadAttention's projections
                layer.quan_w_fn(layer.weight, wb)  # data-free weight init (LSQ's step size)
        setattr(owner, child, new)
    left = float_layers(model)
    if left:
        warnings.warn(f"these layers stay float (no row in QUANTIZED_TYPES for their type): {', '.join(left)}",
                      stacklevel=2)
    return model


# float by design (documented): normalisation layers; their parameters are per-channel affine terms, as biases are
FLOAT_BY_DESIGN: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def convertible(model: nn.Module) -> list[str]:
    """Names of the layers ``quantize_model`` converts, in module order: exact type in ``QUANTIZED_TYPES``, and not
    inside another such layer (a MultiheadAttention's ``out_proj`` goes with it).

    >>> convertible(nn.Sequential(nn.MultiheadAttention(4, 1), nn.Linear(4, 2), nn.Sequential(nn.Conv1d(1, 1, 1))))
    ['0', '1', '2.0']
    """
    names: list[str] = []
    for name, m in model.named_modules():
        if type(m) in QUANTIZED_TYPES and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def float_layers(model: nn.Module) -> list[str]:
    """``name (Type)`` of every layer, outside the quantized ones and the norms (``FLOAT_BY_DESIGN``), that holds
    parameters of its own: it computes in float and no fault reaches it. After ``quantize_model`` (which warns about
    them) these are the layers whose exact type has no row in ``QUANTIZED_TYPES`` (a Linear subclass of unknown
    forward among them).

    >>> float_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Embedding(5, 2), nn.PReLU()))
    ['0 (Linear)', '2 (Embedding)', '3 (PReLU)']
    >>> float_layers(quantize_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Embedding(5, 2))))
    []
    """
    twins = tuple(set(QUANTIZED_TYPES.values()))
    inside = {id(sub) for m in model.modules() if isinstance(m, twins) for sub in m.modules()}
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if id(m) not in inside and not isinstance(m, FLOAT_BY_DESIGN)
            and any(True for _ in m.parameters(recurse=False))]


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """Run one forward in eval mode so that data-dependent quantizers (LSQ on activations) initialise.

    Call it before building the optimizer: LSQ creates its step-size parameter at initialisation.
    """
    was_training = model.training
    model.eval()
    model(x)
    model.train(was_training)


def weight_bits_total(model: nn.Module) -> int:
    """Number of stored weight bits of the quantized layers: sum of numel * wbits (32-bit weights are fp32).

    >>> weight_bits_total(quantize_model(nn.Sequential(nn.Linear(4, 2, bias=False)), wbits=4, first_last_bits=None))
    32
    """
    return sum(m.weight.numel() * m.wbits for _, m in quantized_layers(model))


def stored_widths(model: nn.Module) -> dict[str, int]:
    """The weight bit width each quantized layer stores, by layer name (what ran, not what was asked for).

    >>> stored_widths(quantize_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)), wbits=4))
    {'0': 8, '1': 4, '2': 8}
    """
    return {name: int(m.wbits) for name, m in quantized_layers(model)}


def widths_label(widths: dict[str, int] | list[int], wbits: int | None = None) -> str:
    """How a model's stored weight widths read in a label: ``w4`` when every layer stores 4 bits, ``w4 (first/last
    8)`` when only the first and last layers differ, else ``w4 (4-8 mixed)``. ``wbits``: the width asked for (the
    most common width when None).

    >>> widths_label([8, 4, 4, 8], 4), widths_label([4, 4], 4), widths_label([8, 4, 6, 8], 4), widths_label([16])
    ('w4 (first/last 8)', 'w4', 'w4 (4-8 mixed)', 'w16')
    """
    ws = list(widths.values()) if isinstance(widths, dict) else list(widths)
    if not ws:
        return "w?" if wbits is None else f"w{wbits}"
    m = max(set(ws), key=ws.count) if wbits is None else int(wbits)
    if all(w == m for w in ws):
        return f"w{m}"
    inner = ws[1:-1]
    if len(ws) >= 2 and ws[0] == ws[-1] != m and all(w == m for w in inner):
        return f"w{m} (first/last {ws[0]})"
    return f"w{m} ({min(ws)}-{max(ws)} mixed)"


def stored_record(model: nn.Module, wbits: int) -> dict:
    """What results.json says of the stored weights: ``widths`` (layer -> bits), ``wbits_label`` and
    ``bits_all_wbits`` (the stored bits were every layer at ``wbits``, to set against ``bits_model``); with
    group-wise scales also ``groups`` (``weight_group_entries``). Scales are not counted among the stored bits.

    >>> stored_record(quantize_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)), wbits=4), 4)
    {'widths': {'0': 8, '1': 4, '2': 8}, 'wbits_label': 'w4 (first/last 8)', 'bits_all_wbits': 160}
    """
    widths = stored_widths(model)
    groups = weight_group_entries(model)
    label = AO_LABEL if is_torch_ao(model) else widths_label(widths, wbits)  # torch.ao stores int8 codes
    return {"widths": widths, "wbits_label": label, "bits_all_wbits": bits_all_at(model, wbits),
            **({"groups": groups} if groups else {})}


def weight_group_entries(model: nn.Module) -> dict[str, int]:
    """Entries per weight scale of each layer with group-wise scales (``quant.group_size``; see ``weight_groups``),
    by layer name; empty without them.

    >>> m = quantize_model(nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 2)), "minmax", wbits=4, group_size=32)
    >>> weight_group_entries(m), weight_group_entries(quantize_model(nn.Sequential(nn.Linear(4, 2))))
    ({'0': 32, '1': 8}, {})
    """
    sizes = {name: getattr(getattr(m, "quan_w_fn", None), "group_size", None)  # torch.ao layers: none
             for name, m in quantized_layers(model)}
    return {name: weight_groups(tuple(m.weight.shape), sizes[name])[2] for name, m in quantized_layers(model)
            if sizes[name] is not None and m.weight.dim() > 1 and m.wbits < 32}


def bits_all_at(model: nn.Module, wbits: int) -> int:
    """Stored weight bits the model would have with every quantized layer at ``wbits`` (the reference's m-bit models).

    >>> bits_all_at(quantize_model(nn.Sequential(nn.Linear(4, 2, bias=False)), wbits=8), 4)
    32
    """
    return sum(m.weight.numel() * int(wbits) for _, m in quantized_layers(model))

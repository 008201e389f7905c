"""FaultInjector: wraps each quantized layer's ``quan_w_fn`` (and ``quan_a_fn``) to corrupt integer codes.

The wrapper quantizes, then, when injection is on for the module's mode, flips (or sticks) bits in the integer
codes and returns ``x_faulted.detach() + (x_q - x_q.detach())``: the forward sees the faults, the backward the
gradient of the clean quantized value. Patterns come from ``qfi_cli.faults.sampler``: trial ``t``'s pattern
depends only on (seed, t, ber, layer), and patterns are nested across rates.

The wrapper is set as an instance attribute that shadows the registered submodule, so the state_dict keeps
its keys, and ``detach()`` removes it: the model is then exactly as before.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import apply_mask, n_exposed_bits, positions_to_masks, to_unsigned
from qfi_cli.faults.models import FaultConfig
from qfi_cli.faults.sampler import NestedBitSampler, sample_fixed_count, stream_key
from qfi_cli.quant.layers import quantized_layers


_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_POPCOUNT8_ON: dict[torch.device, torch.Tensor] = {}


def _popcount(u: torch.Tensor) -> int:
    """Number of set bits in the k-bit patterns ``u`` (int64 in ``[0, 2**k)``, k <= 8): one table lookup."""
    if not u.numel():
        return 0
    table = _POPCOUNT8_ON.setdefault(u.device, _POPCOUNT8.to(u.device))
    return int(table[u].sum())


class _FaultyQuantizer:
    """Stands in for a layer's quantizer: quantize with the original, then corrupt the codes."""

    def __init__(self, injector: "FaultInjector", name: str, layer: nn.Module, quantizer: nn.Module) -> None:
        self.injector, self.name, self.layer, self.quantizer = injector, name, layer, quantizer

    def __call__(self, x: torch.Tensor, bits: int, is_activation: bool = False) -> torch.Tensor:
        x_q = self.quantizer(x, bits, is_activation=is_activation)
        inj = self.injector
        if bits >= 32 or not inj.active(self.layer.training):
            return x_q
        if not is_activation and self.layer.training and x_q.requires_grad:
            self.layer.clean_weight = x_q  # SAM ascends along the clean quantized weight's gradient
        x_f = inj.corrupt(self.name, x_q.detach(), bits, self.quantizer.last_scale, self.quantizer.last_signed,
                          is_activation)
        return x_f + (x_q - x_q.detach()) if x_q.requires_grad else x_f


class FaultInjector:
    """Inject bit errors into a quantized model's integer weight (and activation) codes.

    >>> from qfi_cli.quant import quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4)), first_last_bits=None).eval()
    >>> x = torch.randn(2, 64)
    >>> clean = model(x)
    >>> with FaultInjector(model, FaultConfig(ber=0.01), seed=0) as inj:
    ...     faulty = model(x)
    >>> inj.flips_total() > 0, torch.equal(model(x), clean)
    (True, True)
    """

    def __init__(self, model: nn.Module, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.model = model
        self.config = (config or FaultConfig()).validated()
        self.seed = int(seed)
        self.enabled = True
        self.trial = 0
        self._forwards = 0
        self._hold = False
        self._counted: dict[str, np.ndarray] | None = None
        self._counted_draw = -1
        self.flips: dict[str, int] = {}
        self.layers = [(n, m) for n, m in quantized_layers(model) if self._selected(n)]
        if self.config.layers is not None and not self.layers:
            names = ", ".join(n for n, _ in quantized_layers(model))
            raise QfiError(f"fault.layers {self.config.layers} match no quantized layer; layers are: {names}")
        self._hook = None
        self.attached = False
        self.attach()

    @property
    def enable_in_training(self) -> bool:
        return self.config.enable_in_training

    def _selected(self, name: str) -> bool:
        pats = self.config.layers
        return pats is None or any(fnmatch.fnmatchcase(name, p) for p in pats)

    # -- attaching --------------------------------------------------------------------------------------------
    def attach(self) -> "FaultInjector":
        if self.attached:
            return self
        target = self.config.target
        for name, m in self.layers:
            if target in ("weights", "both"):
                m.__dict__["quan_w_fn"] = _FaultyQuantizer(self, name, m, m._modules["quan_w_fn"])
            if target in ("activations", "both"):
                m.__dict__["quan_a_fn"] = _FaultyQuantizer(self, name, m, m._modules["quan_a_fn"])
        self._hook = self.model.register_forward_pre_hook(self._count_forward)
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove every wrapper and hook: the model is bit-identical to before ``attach``."""
        for _, m in self.layers:
            m.__dict__.pop("quan_w_fn", None)
            m.__dict__.pop("quan_a_fn", None)
            m.__dict__.pop("clean_weight", None)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.attached = False

    def __enter__(self) -> "FaultInjector":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- modes ------------------------------------------------------------------------------------------------
    def active(self, training: bool) -> bool:
        cfg = self.config
        return self.enabled and (cfg.enable_in_training if training else cfg.enable_in_inference)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """No injection inside the block (clean evaluation with the injector attached)."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def set_trial(self, trial: int) -> None:
        """Select trial ``trial``'s fault pattern and reset the flip counters."""
        self.trial, self._forwards, self._counted = int(trial), 0, None
        self.flips = {}

    def _count_forward(self, *_: object) -> None:
        if not self._hold:
            self._forwards += 1

    @contextmanager
    def same_faults(self) -> Iterator[None]:
        """Every forward inside the block sees one fault pattern (both passes of a SAM step)."""
        self._forwards += 1
        self._hold = True
        try:
            yield
        finally:
            self._hold = False

    # -- sampling ---------------------------------------------------------------------------------------------
    def _bit_positions(self, bits: int) -> list[int] | None:
        if self.config.bits is None:
            return None
        pos = sorted({b if b >= 0 else bits + b for b in self.config.bits})
        if pos[0] < 0 or pos[-1] >= bits:
            raise QfiError(f"fault.bits {self.config.bits} do not fit {bits}-bit codes (0..{bits - 1}, or -1 = MSB)")
        return pos

    def _positions(self, name: str, n_bits: int, is_activation: bool) -> np.ndarray:
        cfg = self.config
        draw = self._forwards if (is_activation or cfg.persistence == "forward") else 0
        if cfg.fault_model.counted:
            if self._counted is None or self._counted_draw != draw:
                sizes = {n: n_exposed_bits(m.weight.numel(), m.wbits, self._bit_positions(m.wbits))
                         for n, m in self.layers if m.wbits < 32}
                total = sum(sizes.values())
                if cfg.count > total:
                    raise QfiError(f"fault.count={cfg.count} exceeds the {total} exposed weight bits")
                self._counted = sample_fixed_count(sizes, int(cfg.count),
                                                   lambda n: stream_key(self.seed, self.trial, n, draw))
                self._counted_draw = draw
            return self._counted.get(name, np.empty(0, np.int64))
        layer_key = name + (":act" if is_activation else "")
        return NestedBitSampler(n_bits, stream_key(self.seed, self.trial, layer_key, draw)).positions(cfg.ber)

    def corrupt(self, name: str, x_q: torch.Tensor, bits: int, scale: torch.Tensor, signed: bool,
                is_activation: bool = False) -> torch.Tensor:
        """Return a copy of the quantized tensor ``x_q`` with this trial's faults in its integer codes."""
        bit_positions = self._bit_positions(bits)
        pos = self._positions(name, n_exposed_bits(x_q.numel(), bits, bit_positions), is_activation)
        key = name + (":act" if is_activation else "")
        if len(pos) == 0:
            self.flips.setdefault(key, 0)
            return x_q
        idx, mask = positions_to_masks(np.asarray(pos), bits, bit_positions)
        idx, mask = idx.to(x_q.device), mask.to(x_q.device)
        flat = x_q.reshape(-1)
        s = scale.reshape(-1)
        s = s[idx // (flat.numel() // s.numel())] if s.numel() > 1 else s
        codes = torch.round(flat[idx] / s).long()
        new = apply_mask(codes, mask, bits, signed, self.config.fault_model.mode)
        out = flat.clone()
        out[idx] = new.to(out.dtype) * s
        if self.config.fault_model.mode == "flip":  # every faulty bit changes: count the set bits of the masks
            changed = _popcount(mask)
        else:  # a stuck bit changes only where it held the other value
            changed = _popcount(to_unsigned(codes, bits) ^ to_unsigned(new, bits))
        self.flips[key] = self.flips.get(key, 0) + changed
        return out.view_as(x_q)

    def exposed_weight_bits(self) -> int:
        """Number of stored weight bits this injector can corrupt (selected layers and bit positions)."""
        if self.config.target == "activations":
            return 0
        return sum(n_exposed_bits(m.weight.numel(), m.wbits, self._bit_positions(m.wbits))
                   for _, m in self.layers if m.wbits < 32)

    def flips_total(self, activations: bool = False) -> int:
        """Bits changed since ``set_trial`` (weights only unless ``activations``)."""
        return sum(v for k, v in self.flips.items() if activations or not k.endswith(":act"))

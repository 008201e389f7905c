"""FaultInjector: bit errors in the stored codes of a quantized model's weights (and activations).

Two ways in, one sampler and one bit primitive (``_fault_entries``, through ``faults.flips.write_masked``) behind
both:

* **In place, once per trial** (evaluation): inside ``frozen_weights(model)`` each layer holds its clean quantized
  weight once; ``with injector.trial(t, ber):`` writes trial ``t``'s faulty values into those frozen weights at the
  faulty entries only and restores the saved entries on exit. A trial costs O(flips): no copy, no re-quantization.
* **Per forward** (training, transient faults, activations, or a model used without frozen weights): the injector
  sets each selected layer's ``weight_fault`` / ``input_fault`` slot (see ``qfi_cli.quant.layers``); the hook
  corrupts a copy of the quantized tensor and returns ``x_faulted.detach() + (x_q - x_q.detach())``: the forward sees
  the faults, the backward the gradient of the clean quantized value (the seed's rule 1).

Patterns come from ``qfi_cli.faults.sampler``: trial ``t``'s pattern depends only on (seed, t, layer, draw) and
the rate, and is nested across rates; ``step(k)`` gives training step ``k`` its own pattern (reproducible from
(seed, k)), the same for every forward inside it (both passes of a SAM step). The bits of an entry are its stored
pattern as its ``Encoding`` says (two's-complement or unsigned integer codes, or IEEE float bits).
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import n_exposed_bits, positions_to_masks
from qfi_cli.faults.flips import write_masked
from qfi_cli.faults.models import FaultConfig
from qfi_cli.faults.sampler import NestedBitSampler, sample_fixed_count, stream_key
from qfi_cli.quant.encoding import Encoding
from qfi_cli.quant.layers import QuantizedLayerMixin, quantized_layers

_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_POPCOUNT8_ON: dict[torch.device, torch.Tensor] = {}
ACT = ":act"  # suffix of an activation stream's layer key
TRAIN = "@train"  # suffix of a training step's layer key (keeps training patterns apart from evaluation trials)


def popcount(u: torch.Tensor, bits: int) -> int:
    """Number of set bits in the ``bits``-wide patterns ``u`` (int64 in ``[0, 2**bits)``): table lookups per byte.

    >>> popcount(torch.tensor([0b1011, 0xFFFF]), 16)
    19
    """
    if not u.numel():
        return 0
    table = _POPCOUNT8_ON.setdefault(u.device, _POPCOUNT8.to(u.device))
    total = table[u & 255].sum()
    for shift in range(8, bits, 8):
        total += table[(u >> shift) & 255].sum()
    return int(total)


def _straight_through(x_q: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
    """Forward value ``x_f``, gradient of ``x_q``."""
    return x_f + (x_q - x_q.detach()) if x_q.requires_grad else x_f


class FaultInjector:
    """Inject bit errors into a quantized model's stored weight (and activation) codes.

    >>> from qfi_cli.quant import frozen_weights, quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4)), first_last_bits=None).eval()
    >>> x = torch.randn(2, 64)
    >>> clean = model(x)
    >>> with FaultInjector(model, FaultConfig(ber=0.01), seed=0) as inj, frozen_weights(model):
    ...     with inj.trial(0):                 # faults written into the frozen weights, undone on exit
    ...         faulty = model(x)
    ...     flips = inj.flips_total()
    >>> flips > 0, torch.equal(model(x), clean), torch.equal(faulty, clean)
    (True, True, False)
    """

    def __init__(self, model: nn.Module, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.model = model
        self.config = (config or FaultConfig()).validated()
        self.seed = int(seed)
        self.enabled = True
        self.trial_index = 0
        self.ber = self.config.ber
        self.count = int(self.config.count)
        self.training_step: int | None = None
        self._forwards = 0
        self._hold = False
        self._samplers: dict[tuple, NestedBitSampler] = {}
        self._counted: dict[tuple, dict[str, np.ndarray]] = {}
        self._count_samplers: dict[tuple, dict[str, NestedBitSampler]] = {}
        self.flips: dict[str, int] = {}
        everything = quantized_layers(model)
        self.layers = [(n, m) for n, m in everything if self._selected(n)]
        if self.config.layers is not None and not self.layers:
            names = ", ".join(n for n, _ in everything)
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

    @property
    def _targets_weights(self) -> bool:
        return self.config.target in ("weights", "both")

    @property
    def _targets_activations(self) -> bool:
        return self.config.target in ("activations", "both")

    # -- attaching: the layers' fault slots, and nothing else ------------------------------------------------------
    def attach(self) -> "FaultInjector":
        if self.attached:
            return self
        for name, m in self.layers:
            if m.weight_fault is not None or m.input_fault is not None:
                raise QfiError(f"layer {name} already has a fault injector attached: detach it first")
            if self._targets_weights:
                m.weight_fault = self._hook_for(name, m, is_activation=False)
            if self._targets_activations:
                m.input_fault = self._hook_for(name, m, is_activation=True)
        self._hook = self.model.register_forward_pre_hook(self._count_forward)
        self.attached = True
        return self

    def detach(self) -> None:
        """Clear every fault slot and hook: the model is bit-identical to before ``attach``."""
        for _, m in self.layers:
            m.weight_fault = None
            m.input_fault = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.attached = False

    def __enter__(self) -> "FaultInjector":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook_for(self, name: str, layer: QuantizedLayerMixin,
                  is_activation: bool) -> Callable[[torch.Tensor, Encoding], torch.Tensor]:
        bits = layer.abits if is_activation else layer.wbits

        def hook(x_q: torch.Tensor, encoding: Encoding) -> torch.Tensor:
            if not self.active(layer.training):
                return x_q
            flat = x_q.detach().reshape(-1).clone()
            self._fault_entries(name, flat, encoding, bits, is_activation)
            return _straight_through(x_q, flat.view_as(x_q))

        return hook

    # -- modes --------------------------------------------------------------------------------------------------
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

    def set_trial(self, trial: int, ber: float | None = None, count: int | None = None) -> None:
        """Select trial ``trial``'s fault pattern (at ``ber`` / ``count``, default the config's); reset counters."""
        trial = int(trial)
        if trial != self.trial_index or self.training_step is not None:
            self._forget_patterns()
        self.trial_index, self.training_step = trial, None
        self.ber = self.config.ber if ber is None else float(ber)
        self.count = int(self.config.count if count is None else count)
        self._forwards = 0
        self.flips = {}

    @contextmanager
    def trial(self, trial: int, ber: float | None = None, count: int | None = None) -> Iterator[None]:
        """Trial ``trial``'s faults inside the block.

        Inside ``frozen_weights(model)`` with persistent (per-trial) weight faults, the faulty entries of the frozen
        weights are overwritten in place on entry and restored bit for bit on exit (O(flips)); otherwise the
        layers' hooks draw the pattern at each forward. Asking several rates of one trial reuses its samplers, and
        the faulty bits of a lower rate are a subset of a higher rate's.
        """
        self.set_trial(trial, ber, count)
        undo: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        try:
            if self._targets_weights and self.config.persistence == "trial" and self.active(training=False):
                for name, m in self.layers:
                    if m.frozen_weight is not None:
                        flat = m.frozen_weight.view(-1)
                        undo.append((flat, *self._fault_entries(name, flat, m.frozen_encoding, m.wbits, False)))
            yield
        finally:
            for flat, index, old in reversed(undo):
                flat[index] = old

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Training step ``step``'s fault pattern for every forward inside the block (both passes of a SAM step):
        a fresh pattern per step, reproducible from (seed, step)."""
        if self.training_step != int(step):
            self._forget_patterns()
        self.training_step, self.ber, self.count = int(step), self.config.ber, int(self.config.count)
        self.flips = {}
        self._hold = True
        try:
            yield
        finally:
            self._hold = False

    def _forget_patterns(self) -> None:
        self._samplers.clear()
        self._counted.clear()
        self._count_samplers.clear()

    def _count_forward(self, *_: object) -> None:
        if not self._hold:
            self._forwards += 1

    @contextmanager
    def same_faults(self) -> Iterator[None]:
        """Every forward inside the block sees one fault pattern."""
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

    def _stream(self, name: str, is_activation: bool) -> tuple[int, str, int]:
        """(trial or step, layer key, draw) of the stream that a layer's faults come from now."""
        key = name + (ACT if is_activation else "")
        if self.training_step is not None:
            return self.training_step, key + TRAIN, 0
        per_forward = is_activation or self.config.persistence == "forward"
        return self.trial_index, key, self._forwards if per_forward else 0

    def _positions(self, name: str, n_bits: int, is_activation: bool) -> np.ndarray:
        trial, key, draw = self._stream(name, is_activation)
        if self.config.fault_model.counted:
            return self._counted_positions(trial, draw).get(name, np.empty(0, np.int64))
        sampler = self._samplers.get((trial, key, draw))
        if sampler is None or sampler.n_bits != n_bits:
            sampler = self._samplers[(trial, key, draw)] = NestedBitSampler(
                n_bits, stream_key(self.seed, trial, key, draw))
        return sampler.positions(self.ber)

    def _counted_positions(self, trial: int, draw: int) -> dict[str, np.ndarray]:
        """``count`` faulty bits over all selected layers' weights together (nested across counts)."""
        if (trial, draw, self.count) not in self._counted:
            sizes = {n: n_exposed_bits(m.weight.numel(), m.wbits, self._bit_positions(m.wbits)) for n, m in self.layers}
            total = sum(sizes.values())
            if self.count > total:
                raise QfiError(f"fault.count={self.count} exceeds the {total} exposed weight bits")
            suffix = TRAIN if self.training_step is not None else ""
            cache = self._count_samplers.setdefault((trial, draw), {})  # per layer: reused across counts
            self._counted[(trial, draw, self.count)] = sample_fixed_count(
                sizes, self.count, lambda n: stream_key(self.seed, trial, n + suffix, draw), cache)
        return self._counted[(trial, draw, self.count)]

    def _fault_entries(self, name: str, flat: torch.Tensor, encoding: Encoding, bits: int,
                       is_activation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Overwrite the faulty entries of the flattened tensor ``flat`` in place with their faulty values.

        Returns ``(index, old values)`` of the entries it overwrote (what undoes it) and counts the changed bits.
        """
        bit_positions = self._bit_positions(bits)
        pos = self._positions(name, n_exposed_bits(flat.numel(), bits, bit_positions), is_activation)
        key = name + (ACT if is_activation else "")
        if len(pos) == 0:
            self.flips.setdefault(key, 0)
            return flat.new_empty(0, dtype=torch.long), flat.new_empty(0)
        index, mask = positions_to_masks(np.asarray(pos), bits, bit_positions)
        w = write_masked(flat, encoding, index, mask, self.config.fault_model.mode)
        # a flipped bit always changes; a stuck bit only where it held the other value
        changed = (popcount(mask.to(flat.device), bits) if self.config.fault_model.mode == "flip"
                   else popcount(w.patterns ^ w.new, bits))
        self.flips[key] = self.flips.get(key, 0) + changed
        return w.index, w.old

    def exposed_weight_bits(self) -> int:
        """Number of stored weight bits this injector can corrupt (selected layers and bit positions)."""
        if not self._targets_weights:
            return 0
        return sum(n_exposed_bits(m.weight.numel(), m.wbits, self._bit_positions(m.wbits)) for _, m in self.layers)

    def flips_total(self, activations: bool = False) -> int:
        """Bits changed since ``set_trial`` / ``trial`` / ``step`` (weights only unless ``activations``)."""
        return sum(v for k, v in self.flips.items() if activations or not k.endswith(ACT))

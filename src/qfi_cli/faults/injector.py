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

Patterns come from the fault source ``fault.model`` names (``qfi_cli.faults.sources``: one class per source, bound
to the model's layers when the injector is made; the injector asks it for one layer's faults at the stream in use).
At a rate, trial ``t``'s weight pattern comes from one stream over the exposed bits of all selected layers laid end
to end, depends only on (seed, t, draw), those layers' sizes and the rate, and is nested across rates;
``step(k)`` gives training step ``k`` its own pattern (reproducible from (seed, k)), the same for every forward
inside it (both passes of a SAM step). The bits of an entry are its stored pattern as its ``Encoding`` says
(two's-complement or unsigned integer codes, or IEEE float bits). Which layers and bits are exposed is
``qfi_cli.faults.selection``.

Beyond the weight codes, ``fault.target`` may select a layer's other stored parts (``qfi_cli.faults.parts``:
biases, scales, zero points): inside ``frozen_weights`` a trial writes them in place with the weight codes (a scale
or zero point re-decodes the weight entries it governs) and restores every written entry on exit.

Protection (``fault.protect``): protected weight bits never fail and are not exposed. At a rate, the pattern is
drawn as without protection and the protected bits are then left out, so runs that differ only in protection meet
the same faults elsewhere (paired); with ``fault.count`` the count is drawn among the unprotected bits.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.config import FaultConfig
from qfi_cli.faults.flips import writable, write_masked, write_masked_np
from qfi_cli.faults.parts import PARTS, StoredPart, redecode
from qfi_cli.faults.selection import allowed_mask, select_layers
from qfi_cli.faults.sources.base import ACT, TRAIN, WEIGHT_PART, At, NpMasks, part_key
from qfi_cli.quant.encoding import Encoding
from qfi_cli.quant.layers import QuantizedLayerMixin, quantized_layers
from qfi_cli.quant.torch_ao import check_fault_modes

_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_POPCOUNT8_ON: dict[torch.device, torch.Tensor] = {}
Masks = list[tuple[str, torch.Tensor]]  # (mode, mask) pairs, each mask aligned with one code index tensor
Recorder = Callable[[str, torch.Tensor, Masks, int], None]  # (layer key, code index, masks, bits)


def popcount(u: torch.Tensor, bits: int) -> int:
    """Number of set bits in the ``bits``-wide patterns ``u`` (int64 in ``[0, 2**bits)``): table lookups per byte.

    >>> popcount(torch.tensor([0b1011, 0xFFFF]), 16)
    19
    """
    if not u.numel():
        return 0
    if u.device.type == "cpu" and hasattr(np, "bitwise_count"):  # numpy >= 2: one vectorised instruction
        return int(np.bitwise_count(u.numpy()).sum())
    table = _POPCOUNT8_ON.setdefault(u.device, _POPCOUNT8.to(u.device))
    total = table[u & 255].sum()
    for shift in range(8, bits, 8):
        total += table[(u >> shift) & 255].sum()
    return int(total)


def _popcount_np(u: np.ndarray, bits: int) -> int:
    """``popcount`` of a numpy array of patterns."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2: one vectorised instruction
        return int(np.bitwise_count(u).sum())
    return popcount(torch.from_numpy(u), bits)


def straight_through(x_q: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
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
        self._targets: dict[str, tuple[torch.Tensor, torch.Tensor | np.ndarray]] = {}  # see _frozen_target
        self.flips: dict[str, int] = {}
        self.recorder: Recorder | None = None  # called with every trial's faulty entries (``--save-faults``)
        everything = quantized_layers(model)
        self.layers = select_layers(everything, self.config.layers, self.config.protect)
        self._allowed_cache: dict[tuple[str, int], int] = {}
        self.parts: tuple[str, ...] = self.config.parts  # the stored parts that take faults (faults.parts)
        self._sizes: dict[str, list[tuple[str, int, int]]] = {}
        check_fault_modes(self.layers, self.config)  # torch.ao layers: per-trial weight faults in evaluation
        self.source = self.config.source.bind(self, everything)  # draws the faults (``faults.sources``)
        self._hook = None
        self.attached = False
        self.attach()

    @property
    def enable_in_training(self) -> bool:
        return self.config.enable_in_training

    @property
    def _targets_weights(self) -> bool:
        return WEIGHT_PART in self.parts

    @property
    def _targets_activations(self) -> bool:
        return self.config.activations

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
        self._targets.clear()
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
            return straight_through(x_q, flat.view_as(x_q))

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
        undo: list[tuple] = []  # (layer, (target, index, old))
        try:
            if self.parts and self.config.persistence == "trial" and self.active(training=False):
                for name, m in self.layers:
                    self._write_parts(name, m, undo)
            yield
        finally:
            for m, (target, index, old) in reversed(undo):
                target[index] = old
                m.restore_frozen()

    def _write_parts(self, name: str, layer: QuantizedLayerMixin, undo: list[tuple]) -> None:
        """Write this trial's faults of every selected stored part of one layer in place (weight codes first; then
        the encoding's scales and zero point, one re-decode of the weight entries they govern; then the bias),
        appending what undoes each write to ``undo``."""
        faulty, governed = None, []
        for part in (PARTS.get(p) for p in self.parts):
            stored = part.stored(layer, self.config, None if layer.frozen_weight is None
                                 else self._frozen_target(name, layer))
            if stored is None:
                continue
            written = self._fault_entries(name, stored.values, stored.encoding, self._width(part, layer), False,
                                          part.name)
            if written is None:
                continue
            if part.direct:
                undo.append((layer, written))
            else:
                target, index, _ = written
                index = index.cpu().numpy() if isinstance(index, torch.Tensor) else index
                faulty = part.faulty(layer.frozen_encoding if faulty is None else faulty, target, index)
                governed.append(part.governs(layer.frozen_encoding, index, layer.frozen_weight.numel()))
        if faulty is not None:
            undo.append((layer, redecode(self._frozen_target(name, layer), layer.frozen_encoding, faulty,
                                         np.concatenate(governed))))
        if undo and undo[-1][0] is layer:
            layer.commit_frozen()  # a torch.ao layer repacks the codes written (only those touched)

    def _width(self, part: StoredPart, layer: QuantizedLayerMixin) -> int:
        return part.size(layer, self.config)[1]

    def _frozen_target(self, name: str, layer: QuantizedLayerMixin) -> torch.Tensor | np.ndarray:
        """What a trial writes layer ``name``'s faults into: its frozen weight, flattened, as ``writable`` gives it
        (kept while the same frozen weight stays: looking it up costs more than a trial's few writes)."""
        held = self._targets.get(name)
        if held is None or held[0] is not layer.frozen_weight:
            held = self._targets[name] = (layer.frozen_weight,
                                          writable(layer.frozen_weight.view(-1), layer.frozen_encoding))
        return held[1]

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
        self.source.forget()

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
    def allowed_mask(self, name: str, bits: int) -> int:
        """The bits of layer ``name``'s ``bits``-wide weight codes that may fail, as a mask: those ``fault.bits``
        selects, less those ``fault.protect`` protects (``faults.selection.allowed_mask``)."""
        key = (name, bits)
        if key not in self._allowed_cache:
            self._allowed_cache[key] = allowed_mask(self.config.bits, self.config.protect, name, bits)
        return self._allowed_cache[key]

    def _stream(self, name: str, is_activation: bool) -> tuple[int, str, int]:
        """(trial or step, layer key, draw) of the stream that a layer's faults come from now."""
        key = name + (ACT if is_activation else "")
        if self.training_step is not None:
            return self.training_step, key + TRAIN, 0
        per_forward = is_activation or self.config.persistence == "forward"
        return self.trial_index, key, self._forwards if per_forward else 0

    def _faults(self, name: str, n_codes: int, bits: int, is_activation: bool,
                part: str = WEIGHT_PART) -> tuple[np.ndarray, NpMasks]:
        """This layer's faulty entries now (of its stored ``part``, or its input activations): ``(code index,
        [(mode, mask)])`` as int64 numpy arrays (the few entries a trial touches) from the source, protected bits
        left out."""
        index, masks = self.source.faults(At(name, n_codes, bits, is_activation, *self._stream(name, is_activation),
                                             part))
        allowed = (1 << bits) - 1 if is_activation else self.allowed_mask(name, bits)
        if masks and allowed != (1 << bits) - 1:  # leave out what fault.bits / fault.protect exclude
            masks = [(mode, mask & allowed) for mode, mask in masks]
            keep = np.any([mask != 0 for _, mask in masks], axis=0)
            if not keep.all():
                index, masks = index[keep], [(mode, mask[keep]) for mode, mask in masks]
        return index, masks

    def _fault_entries(self, name: str, flat: torch.Tensor | np.ndarray, encoding: Encoding, bits: int,
                       is_activation: bool, part: str = WEIGHT_PART) -> tuple[torch.Tensor | np.ndarray, ...] | None:
        """Overwrite the faulty entries of the flattened tensor ``flat`` (or its numpy view, see ``writable``) in
        place with their faulty values (``part``: the stored part ``flat`` holds).

        Returns ``(target, index, old values)`` such that ``target[index] = old`` undoes it (None: nothing
        written), and counts the changed bits.
        """
        index, masks = self._faults(name, flat.size if isinstance(flat, np.ndarray) else flat.numel(), bits,
                                    is_activation, part)
        key = name + (ACT if is_activation else part_key(part))
        if self.recorder is not None and not is_activation and part == WEIGHT_PART:
            self.recorder(name, torch.from_numpy(index), [(m, torch.from_numpy(k)) for m, k in masks], bits)
        if index.size == 0:
            self.flips.setdefault(key, 0)
            return None
        target = writable(flat, encoding)
        if isinstance(target, np.ndarray):
            old, patterns, new = write_masked_np(target, encoding, index, masks)  # flips first, then stuck-at bits
        else:
            w = write_masked(flat, encoding, torch.from_numpy(index), [(m, torch.from_numpy(k)) for m, k in masks])
            target, index, old, patterns, new = flat, w.index, w.old, w.patterns.cpu().numpy(), w.new.cpu().numpy()
        # a flipped bit always changes; a stuck bit only where it held the other value
        self.flips[key] = self.flips.get(key, 0) + _popcount_np(patterns ^ new, bits)
        return target, index, old

    def part_sizes(self, part: str) -> list[tuple[str, int, int]]:
        """``(layer name, entries, bits per entry)`` of stored ``part`` (``qfi_cli.faults.parts``) in every selected
        layer, in layer order (kept: the stored shapes do not change while an injector lives)."""
        if part not in self._sizes:
            self._sizes[part] = [(n, *PARTS.get(part).size(m, self.config)) for n, m in self.layers]
        return self._sizes[part]

    def exposed_bits_by_part(self) -> dict[str, int]:
        """Number of stored bits this injector can corrupt, per selected stored part (selected layers and bit
        positions at each part's width, less the protected ones)."""
        return {part: sum(entries * bin(self.allowed_mask(n, bits)).count("1")
                          for n, entries, bits in self.part_sizes(part)) for part in self.parts}

    def exposed_bits(self) -> int:
        """Number of stored bits this injector can corrupt, all selected parts together (``bits_total``)."""
        return sum(self.exposed_bits_by_part().values())

    def exposed_weight_bits(self) -> int:
        """Number of stored weight-code bits this injector can corrupt (selected layers and bit positions, less the
        protected ones)."""
        return self.exposed_bits_by_part().get(WEIGHT_PART, 0)

    def flips_by_part(self) -> dict[str, int]:
        """Stored bits changed since ``set_trial`` / ``trial`` / ``step``, per selected stored part."""
        out = dict.fromkeys(self.parts, 0)
        for key, v in self.flips.items():
            if not key.endswith(ACT):
                part = next((p for p in self.parts if p != WEIGHT_PART and key.endswith(part_key(p))), WEIGHT_PART)
                out[part] = out.get(part, 0) + v
        return out

    def flips_total(self, activations: bool = False) -> int:
        """Bits changed since ``set_trial`` / ``trial`` / ``step`` (weights only unless ``activations``)."""
        return sum(v for k, v in self.flips.items() if activations or not k.endswith(ACT))

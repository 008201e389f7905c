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

Patterns come from ``qfi_cli.faults.sampler``: trial ``t``'s weight pattern at a rate comes from one stream over
the exposed bits of all selected layers laid end to end (one sampler call per trial), depends only on (seed, t,
draw), those layers' sizes and the rate, and is nested across rates (activations: one stream per layer);
``step(k)`` gives training step ``k`` its own pattern (reproducible from (seed, k)), the same for every forward
inside it (both passes of a SAM step). The bits of an entry are its stored
pattern as its ``Encoding`` says (two's-complement or unsigned integer codes, or IEEE float bits). ``fault=replay``
and ``fault=profile`` take their faulty bits from a file instead (``qfi_cli.faults.replay``, ``.profile``).

Protection (``fault.protect``): protected weight bits never fail and are not exposed. At a rate, the pattern is
drawn as without protection and the protected bits are then left out, so runs that differ only in protection meet
the same faults elsewhere (paired); with ``fault.count`` the count is drawn among the unprotected bits.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import n_exposed_bits, positions_to_masks_np, resolve_bits
from qfi_cli.faults.flips import writable, write_masked, write_masked_np
from qfi_cli.faults.models import FaultConfig, ProtectRule
from qfi_cli.faults.profile import read_profile
from qfi_cli.faults.sampler import NestedBitSampler, sample_fixed_count, stream_key
from qfi_cli.quant.encoding import Encoding
from qfi_cli.quant.layers import QuantizedLayerMixin, quantized_layers

_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_POPCOUNT8_ON: dict[torch.device, torch.Tensor] = {}
ACT = ":act"  # suffix of an activation stream's layer key
WEIGHTS = "<weights>"  # key of a trial's one stream for the weight bits of all selected layers together
TRAIN = "@train"  # suffix of a training step's layer key (keeps training patterns apart from evaluation trials)
Masks = list[tuple[str, torch.Tensor]]  # (mode, mask) pairs, each mask aligned with one code index tensor
NpMasks = list[tuple[str, np.ndarray]]  # the same, as numpy arrays
_NO_ENTRIES = np.zeros(0, dtype=np.int64)
_NO_ENTRIES.flags.writeable = False
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


def merge_faults(parts: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, Masks]:
    """Faults given per mode as ``(mode, code index, mask)`` on one code index: ``(index, [(mode, mask)])`` with
    every mask aligned to ``index`` (sorted, distinct; 0 where a mode has no fault).

    >>> index, masks = merge_faults([("flip", torch.tensor([1, 4]), torch.tensor([1, 2])),
    ...                              ("stuck1", torch.tensor([4, 6]), torch.tensor([8, 8]))])
    >>> index.tolist(), [(m, v.tolist()) for m, v in masks]
    ([1, 4, 6], [('flip', [1, 2, 0]), ('stuck1', [0, 8, 8])])
    """
    parts = [p for p in parts if p[1].numel()]
    if not parts:
        return torch.zeros(0, dtype=torch.int64), []
    if len(parts) == 1:
        return parts[0][1], [(parts[0][0], parts[0][2])]
    index = torch.unique(torch.cat([p[1] for p in parts]))
    masks = []
    for mode, idx, mask in parts:
        aligned = torch.zeros_like(index)
        aligned[torch.searchsorted(index, idx)] = mask
        masks.append((mode, aligned))
    return index, masks


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
        self._samplers: dict[tuple, NestedBitSampler] = {}
        self._split: dict[tuple, dict[str, np.ndarray]] = {}  # (trial, draw, ber) -> layer -> its weight bits
        self._layout: tuple[list[str], np.ndarray] | None = None
        self._targets: dict[str, tuple[torch.Tensor, torch.Tensor | np.ndarray]] = {}  # see _frozen_target
        self._counted: dict[tuple, dict[str, np.ndarray]] = {}
        self._count_samplers: dict[tuple, dict[str, NestedBitSampler]] = {}
        self.flips: dict[str, int] = {}
        self.recorder: Recorder | None = None  # called with every trial's faulty entries (``--save-faults``)
        everything = quantized_layers(model)
        self.layers = [(n, m) for n, m in everything if self._selected(n)]
        if self.config.layers is not None and not self.layers:
            names = ", ".join(n for n, _ in everything)
            raise QfiError(f"fault.layers {self.config.layers} match no quantized layer; layers are: {names}")
        for rule in self.config.protect:
            if rule.layers is not None and not any(_matches(n, rule.layers) for n, _ in everything):
                names = ", ".join(n for n, _ in everything)
                raise QfiError(f"fault.protect layers {rule.layers} match no quantized layer; layers are: {names}")
        self._allowed_cache: dict[tuple[str, int], int] = {}
        self.source = None  # the file a replay / profile model reads its faults from
        if self.config.fault_model.source == "replay":
            from qfi_cli.faults.replay import read_fault_file

            self.source = read_fault_file(self.config.file).bind(everything)
        elif self.config.fault_model.source == "profile":
            self.source = read_profile(self.config.file).bind(everything, self.config.file)
        self._hook = None
        self.attached = False
        self.attach()

    @property
    def enable_in_training(self) -> bool:
        return self.config.enable_in_training

    def _selected(self, name: str) -> bool:
        return self.config.layers is None or _matches(name, self.config.layers)

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
        undo: list[tuple] = []
        try:
            if self._targets_weights and self.config.persistence == "trial" and self.active(training=False):
                for name, m in self.layers:
                    if m.frozen_weight is not None:
                        written = self._fault_entries(name, self._frozen_target(name, m), m.frozen_encoding,
                                                      m.wbits, False)
                        if written is not None:
                            undo.append(written)
            yield
        finally:
            for target, index, old in reversed(undo):
                target[index] = old

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
        self._samplers.clear()
        self._split.clear()
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
        """The bit positions ``fault.bits`` selects in ``bits``-wide codes (None: all)."""
        return resolve_bits(self.config.bits, bits, "fault.bits")

    def allowed_mask(self, name: str, bits: int) -> int:
        """The bits of layer ``name``'s ``bits``-wide weight codes that may fail, as a mask: those ``fault.bits``
        selects, less those ``fault.protect`` protects."""
        key = (name, bits)
        if key not in self._allowed_cache:
            chosen = self._bit_positions(bits)
            mask = (1 << bits) - 1 if chosen is None else sum(1 << b for b in chosen)
            for rule in self.config.protect:
                if rule.layers is None or _matches(name, rule.layers):
                    protected = resolve_bits(rule.bits, bits, "fault.protect bits")
                    mask &= 0 if protected is None else ~sum(1 << b for b in protected)
            self._allowed_cache[key] = mask
        return self._allowed_cache[key]

    def _enumerated(self, name: str, bits: int, is_activation: bool) -> list[int] | None:
        """The bit positions a sampler enumerates: ``fault.bits``; for a count, without the protected ones."""
        if is_activation or not self.config.fault_model.counted or not self.config.protect:
            return self._bit_positions(bits)
        allowed = self.allowed_mask(name, bits)
        return None if allowed == (1 << bits) - 1 else [b for b in range(bits) if allowed >> b & 1]

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
        if not is_activation:
            return self._weight_positions(trial, draw)[name]
        sampler = self._samplers.get((trial, key, draw))
        if sampler is None or sampler.n_bits != n_bits:
            sampler = self._samplers[(trial, key, draw)] = NestedBitSampler(
                n_bits, stream_key(self.seed, trial, key, draw))
        return sampler.positions(self.ber)

    def _weight_layout(self) -> tuple[list[str], np.ndarray]:
        """The selected layers' exposed weight bits laid end to end, in layer order: (names, offsets), layer
        ``i`` owning the bits ``offsets[i] <= b < offsets[i + 1]`` of the trial's one weight stream."""
        if self._layout is None:
            sizes = [_n_exposed(m.weight.numel(), m.wbits, self._enumerated(n, m.wbits, False)) for n, m in self.layers]
            self._layout = [n for n, _ in self.layers], np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        return self._layout

    def _weight_positions(self, trial: int, draw: int) -> dict[str, np.ndarray]:
        """Every selected layer's faulty weight bits at the current rate (positions within the layer).

        One stream per (seed, trial or step, draw) covers the exposed bits of all selected layers end to end
        (``_weight_layout``): one sampler call per trial however many layers, each bit still faulty with
        probability exactly ``ber``, independently, and nested across rates."""
        hit = self._split.get((trial, draw, self.ber))
        if hit is None:
            names, offsets = self._weight_layout()
            key = WEIGHTS + (TRAIN if self.training_step is not None else "")
            sampler = self._samplers.get((trial, key, draw))
            if sampler is None:
                sampler = self._samplers[(trial, key, draw)] = NestedBitSampler(
                    int(offsets[-1]), stream_key(self.seed, trial, key, draw))
            pos = sampler.positions(self.ber)
            cuts = np.searchsorted(pos, offsets).tolist()
            hit = self._split[(trial, draw, self.ber)] = {
                name: pos[cuts[i]:cuts[i + 1]] - offsets[i] for i, name in enumerate(names)}
        return hit

    def _counted_positions(self, trial: int, draw: int) -> dict[str, np.ndarray]:
        """``count`` faulty bits over all selected layers' weights together (nested across counts)."""
        if (trial, draw, self.count) not in self._counted:
            sizes = {n: _n_exposed(m.weight.numel(), m.wbits, self._enumerated(n, m.wbits, False))
                     for n, m in self.layers}
            total = sum(sizes.values())
            if self.count > total:
                raise QfiError(f"fault.count={self.count} exceeds the {total} exposed weight bits")
            suffix = TRAIN if self.training_step is not None else ""
            cache = self._count_samplers.setdefault((trial, draw), {})  # per layer: reused across counts
            self._counted[(trial, draw, self.count)] = sample_fixed_count(
                sizes, self.count, lambda n: stream_key(self.seed, trial, n + suffix, draw), cache)
        return self._counted[(trial, draw, self.count)]

    def _faults(self, name: str, n_codes: int, bits: int, is_activation: bool) -> tuple[np.ndarray, NpMasks]:
        """This layer's faulty entries now: ``(code index, [(mode, mask)])`` as int64 numpy arrays (the few
        entries a trial touches), protected bits left out."""
        if self.source is not None:
            index, masks = merge_faults(self.source.faults(name, self, *self._stream(name, is_activation)))
            index, masks = index.cpu().numpy(), [(mode, mask.cpu().numpy()) for mode, mask in masks]
        else:
            chosen = self._enumerated(name, bits, is_activation)
            n_bits = _n_exposed(n_codes, bits, chosen)
            if n_bits == 0:
                return _NO_ENTRIES, []
            index, mask = positions_to_masks_np(self._positions(name, n_bits, is_activation), bits, chosen)
            masks = [(self.config.fault_model.mode, mask)]
        allowed = (1 << bits) - 1 if is_activation else self.allowed_mask(name, bits)
        if masks and allowed != (1 << bits) - 1:  # leave out what fault.bits / fault.protect exclude
            masks = [(mode, mask & allowed) for mode, mask in masks]
            keep = np.any([mask != 0 for _, mask in masks], axis=0)
            if not keep.all():
                index, masks = index[keep], [(mode, mask[keep]) for mode, mask in masks]
        return index, masks

    def _fault_entries(self, name: str, flat: torch.Tensor | np.ndarray, encoding: Encoding, bits: int,
                       is_activation: bool) -> tuple[torch.Tensor | np.ndarray, ...] | None:
        """Overwrite the faulty entries of the flattened tensor ``flat`` (or its numpy view, see ``writable``) in
        place with their faulty values.

        Returns ``(target, index, old values)`` such that ``target[index] = old`` undoes it (None: nothing
        written), and counts the changed bits.
        """
        index, masks = self._faults(name, flat.size if isinstance(flat, np.ndarray) else flat.numel(), bits,
                                    is_activation)
        key = name + (ACT if is_activation else "")
        if self.recorder is not None and not is_activation:
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

    def exposed_weight_bits(self) -> int:
        """Number of stored weight bits this injector can corrupt (selected layers and bit positions, less the
        protected ones)."""
        if not self._targets_weights:
            return 0
        return sum(m.weight.numel() * bin(self.allowed_mask(n, m.wbits)).count("1") for n, m in self.layers)

    def flips_total(self, activations: bool = False) -> int:
        """Bits changed since ``set_trial`` / ``trial`` / ``step`` (weights only unless ``activations``)."""
        return sum(v for k, v in self.flips.items() if activations or not k.endswith(ACT))


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _n_exposed(n_codes: int, bits: int, chosen: list[int] | None) -> int:
    """``n_exposed_bits`` that allows an empty selection (every bit of the layer protected: 0)."""
    return 0 if chosen == [] else n_exposed_bits(n_codes, bits, chosen)


def protect_cells(cells: Sequence[tuple[str, int | None]]) -> list[ProtectRule]:
    """Protection rules for exact layer names (``bit`` None: the whole layer), names escaped for fnmatch.

    >>> protect_cells([("conv1", 7), ("fc[0]", None)])
    [ProtectRule(layers=['conv1'], bits=[7]), ProtectRule(layers=['fc[[]0]'], bits=None)]
    """
    return [ProtectRule(layers=[exact(name)], bits=None if bit is None else [bit]).validated() for name, bit in cells]


def exact(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name``.

    >>> exact("layer1.0.conv1"), exact("a*[b]")
    ('layer1.0.conv1', 'a[*][[]b]')
    """
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)

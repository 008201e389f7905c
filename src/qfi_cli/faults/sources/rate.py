"""Faults at a rate: every exposed bit is faulty independently with probability ``fault.ber`` (``bitflip``: it
flips; ``stuck_at_0`` / ``stuck_at_1``: it is stuck at that value, so a bit already there does not change).

Weight faults of a trial come from one nested sampler stream per (seed, trial or step, draw) over the exposed
weight bits of all selected layers laid end to end in layer order (one sampler call per trial, split by layer);
every other selected stored part (``fault.target``: biases, scales, zero points) has its own such stream over its
bits, so the weight pattern is the same whichever other parts are selected, and the total over all parts is
binomial over their bits together. Activation faults come from one stream per (seed, trial, layer, draw). A
lower rate's faults are a subset of a higher rate's (nesting).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qfi_cli.faults.bits import resolve_bits
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.faults.selection import n_exposed
from qfi_cli.faults.sources.base import (NO_ENTRIES, TRAIN, WEIGHT_PART, WEIGHTS, At, Draw, FaultSource, Level,
                                         NpMasks, check_rate, drawn, part_key, register_fault_model)
from qfi_cli.typed import require


@register_fault_model("stuck_at_1", "stuck1")
@register_fault_model("stuck_at_0", "stuck0")
@register_fault_model("bitflip", "flip")
class RateFaults(FaultSource):
    """Each exposed bit faulty with probability ``fault.ber``, changed as ``mode`` says (flip, stuck0, stuck1).

    >>> RateFaults("stuck0").levels(type("Cfg", (), {"eval": type("E", (), {"bers": [0.1, 0.01, 0.1]}),
    ...                                               "fault": None}))
    [(0.01, None), (0.1, None)]
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def validate(self, fault: Any) -> None:
        require(fault.ber is not None, "ber must be set (a number in [0, 1])")
        check_rate(fault)

    def levels(self, cfg: Any) -> list[Level]:
        return [(b, None) for b in sorted(set(cfg.eval.bers or [cfg.fault.ber]))]

    def bind(self, injector: Any, layers: Sequence[tuple[str, Any]]) -> Draw:
        return RateDraw(injector, self.mode)


class RateDraw(Draw):
    """The rate source bound to an injector: its samplers, kept while a trial (or step) lasts."""

    def __init__(self, injector: Any, mode: str) -> None:
        self.injector, self.mode = injector, mode
        self._samplers: dict[tuple, NestedBitSampler] = {}
        self._split: dict[tuple, dict[str, np.ndarray]] = {}  # (part, trial, draw, ber) -> layer -> its bits
        self._layout: dict[str, tuple[list[str], np.ndarray]] = {}

    def forget(self) -> None:
        self._samplers.clear()
        self._split.clear()

    def faults(self, at: At) -> tuple[np.ndarray, NpMasks]:
        chosen = resolve_bits(self.injector.config.bits, at.bits, "fault.bits")
        n_bits = n_exposed(at.n_codes, at.bits, chosen)
        if n_bits == 0:
            return NO_ENTRIES, []
        if at.is_activation:
            sampler = self._samplers.get((at.trial, at.key, at.draw))
            if sampler is None or sampler.n_bits != n_bits:
                sampler = self._samplers[(at.trial, at.key, at.draw)] = NestedBitSampler(
                    n_bits, stream_key(self.injector.seed, at.trial, at.key, at.draw))
            positions = sampler.positions(self.injector.ber)
        else:
            positions = self._part_positions(at.part, at.trial, at.draw)[at.name]
        return drawn(self.mode, positions, at.bits, chosen)

    def _part_layout(self, part: str) -> tuple[list[str], np.ndarray]:
        """The selected layers' exposed bits of stored ``part`` laid end to end, in layer order: (names, offsets),
        layer ``i`` owning the bits ``offsets[i] <= b < offsets[i + 1]`` of the trial's one stream of that part."""
        if part not in self._layout:
            bits = self.injector.config.bits
            layers = self.injector.part_sizes(part)
            sizes = [n_exposed(n, width, resolve_bits(bits, width, "fault.bits")) for _, n, width in layers]
            self._layout[part] = ([name for name, _, _ in layers],
                                  np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))))
        return self._layout[part]

    def _part_positions(self, part: str, trial: int, draw: int) -> dict[str, np.ndarray]:
        """Every selected layer's faulty bits of stored ``part`` at the current rate (positions within the layer's
        part): one stream per (seed, trial or step, part, draw), each bit faulty with probability exactly ``ber``,
        nested across rates."""
        inj = self.injector
        hit = self._split.get((part, trial, draw, inj.ber))
        if hit is None:
            names, offsets = self._part_layout(part)
            key = WEIGHTS if part == WEIGHT_PART else part_key(part)
            key += TRAIN if inj.training_step is not None else ""
            sampler = self._samplers.get((trial, key, draw))
            if sampler is None:
                sampler = self._samplers[(trial, key, draw)] = NestedBitSampler(
                    int(offsets[-1]), stream_key(inj.seed, trial, key, draw))
            pos = sampler.positions(inj.ber)
            cuts = np.searchsorted(pos, offsets).tolist()
            hit = self._split[(part, trial, draw, inj.ber)] = {
                name: pos[cuts[i]:cuts[i + 1]] - offsets[i] for i, name in enumerate(names)}
        return hit

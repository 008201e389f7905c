"""Exactly ``fault.count`` flipped bits over the exposed stored bits of all selected layers and parts together
(``bitflip_count``): the ``count`` smallest uniforms over the (layer, part) pairs' own streams, so a smaller
count's bits are a subset of a larger count's (nesting), and each part's share follows its size. With
``fault.protect`` the count is drawn among the unprotected bits.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import resolve_bits
from qfi_cli.faults.sampler import NestedBitSampler, sample_fixed_count, stream_key
from qfi_cli.faults.selection import n_exposed
from qfi_cli.faults.sources.base import NO_ENTRIES, TRAIN, At, Draw, FaultSource, Level, NpMasks, drawn, \
    part_key, register_fault_model
from qfi_cli.typed import require


@register_fault_model("bitflip_count")
class CountFaults(FaultSource):
    """Exactly ``fault.count`` stored bits flip (``fault.ber`` is null); stored parts only, not activations.

    >>> CountFaults().levels(type("Cfg", (), {"fault": type("F", (), {"count": 5})}))
    [(None, 5)]
    """

    def validate(self, fault: Any) -> None:
        require(fault.ber is None, f"fault.model={fault.model} flips exactly fault.count bits, so a rate does not "
                                   f"apply: use fault=count (or set fault.ber=null), or fault=bitflip for a rate")
        require(not fault.activations, "bitflip_count applies to stored bits only (weights, biases, scales, "
                                       "zero points): leave activations out of fault.target")

    def check_run(self, cfg: Any, command: str) -> None:
        require(not cfg.eval.bers,
                "eval.bers does not apply to fault.model=bitflip_count (it flips fault.count bits)")
        require(not (command == "sensitivity" and cfg.sensitivity.budget),
                "the protection budget measures the whole model at a rate: give --ber, not --count")

    def levels(self, cfg: Any) -> list[Level]:
        return [(None, cfg.fault.count)]

    def bind(self, injector: Any, layers: Sequence[tuple[str, Any]]) -> Draw:
        return CountDraw(injector, self.mode)


class CountDraw(Draw):
    """The count source bound to an injector: the drawn bits per (trial, draw, count), and per-layer samplers
    reused across counts."""

    def __init__(self, injector: Any, mode: str) -> None:
        self.injector, self.mode = injector, mode
        self._counted: dict[tuple, dict[str, np.ndarray]] = {}
        self._samplers: dict[tuple, dict[str, NestedBitSampler]] = {}

    def forget(self) -> None:
        self._counted.clear()
        self._samplers.clear()

    def _enumerated(self, name: str, bits: int) -> list[int] | None:
        """The bit positions the count is drawn among: ``fault.bits``, less the protected ones."""
        cfg = self.injector.config
        if not cfg.protect:
            return resolve_bits(cfg.bits, bits, "fault.bits")
        allowed = self.injector.allowed_mask(name, bits)
        return None if allowed == (1 << bits) - 1 else [b for b in range(bits) if allowed >> b & 1]

    def faults(self, at: At) -> tuple[np.ndarray, NpMasks]:
        chosen = self._enumerated(at.name, at.bits)
        if n_exposed(at.n_codes, at.bits, chosen) == 0:
            return NO_ENTRIES, []
        positions = self._positions(at.trial, at.draw).get(at.name + part_key(at.part), np.empty(0, np.int64))
        return drawn(self.mode, positions, at.bits, chosen)

    def _positions(self, trial: int, draw: int) -> dict[str, np.ndarray]:
        """``count`` faulty bits over all selected layers' stored parts together (nested across counts), by
        layer key (``name`` + ``part_key(part)``)."""
        inj = self.injector
        if (trial, draw, inj.count) not in self._counted:
            sizes = {n + part_key(part): n_exposed(entries, bits, self._enumerated(n, bits))
                     for part in inj.parts for n, entries, bits in inj.part_sizes(part)}
            total = sum(sizes.values())
            if inj.count > total:
                raise QfiError(f"fault.count={inj.count} exceeds the {total} exposed stored bits")
            suffix = TRAIN if inj.training_step is not None else ""
            cache = self._samplers.setdefault((trial, draw), {})  # per layer: reused across counts
            self._counted[(trial, draw, inj.count)] = sample_fixed_count(
                sizes, inj.count, lambda n: stream_key(inj.seed, trial, n + suffix, draw), cache)
        return self._counted[(trial, draw, inj.count)]

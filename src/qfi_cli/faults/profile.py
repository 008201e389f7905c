"""A measured per-bit error map as a fault model: ``fault=profile fault.file=MAP``.

Chips do not fail uniformly: errors cluster in address ranges and bit lines, and are biased towards one value
(Stutz et al.). A profile says, per layer address range and bit position, how often a bit fails and how, plus
cells stuck at a known value. ``MAP`` is a JSON file::

    {
      "rates": [
        {"layers": ["conv*"], "bits": [-1], "p": 0.01},
        {"layers": ["fc"], "start": 0, "stop": 320, "bits": [0, 1], "p": 0.002, "mode": "stuck1"}
      ],
      "stuck": [
        {"layer": "fc", "index": 12, "bit": 7, "value": 1}
      ]
    }

``rates``: each rule covers the codes ``start <= index < stop`` (flat row-major index into the layer's weight;
``stop`` null = the end) of every layer matching ``layers`` (fnmatch patterns), at bit positions ``bits``
(0 = LSB, negative from the MSB; null = every bit); each covered bit fails independently with probability ``p``,
as a flip (``mode`` ``flip``, the default) or stuck at 0 / 1 (``stuck0`` / ``stuck1``). Rules must not overlap.
``stuck``: cells (layer name, code index, bit) stuck at ``value`` (0 or 1) in every trial; they override a rule.

Sampling is exact: each rule's bits form one group of equal probability, drawn by the nested sampler
(``NestedBitSampler``) from a stream keyed by (fault seed, trial, layer, rule), so trials are reproducible.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import FAULT_MODES, positions_to_masks, resolve_bits
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.typed import require, section


@dataclass
class RateRule:
    """One group of bits with one failure probability ``p`` (see the module docstring)."""

    layers: Optional[list[str]] = None
    p: Optional[float] = None
    bits: Optional[list[int]] = None
    start: int = 0
    stop: Optional[int] = None
    mode: str = "flip"

    def validated(self) -> "RateRule":
        require(self.layers is not None and len(self.layers) > 0, "a rate rule needs layers (fnmatch patterns)")
        require(self.p is not None and 0.0 <= self.p <= 1.0, f"a rate rule needs p in [0, 1], got {self.p}")
        require(self.mode in FAULT_MODES, f"mode must be one of {', '.join(FAULT_MODES)}, got {self.mode!r}")
        require(self.start >= 0 and (self.stop is None or self.stop > self.start),
                f"a rate rule needs 0 <= start < stop, got start={self.start} stop={self.stop}")
        require(self.bits != [], "bits must not be an empty list (null = every bit)")
        return self


@dataclass
class StuckCell:
    """One memory cell (layer, code index, bit) stuck at ``value``."""

    layer: Optional[str] = None
    index: Optional[int] = None
    bit: Optional[int] = None
    value: Optional[int] = None

    def validated(self) -> "StuckCell":
        require(self.layer is not None and self.index is not None and self.bit is not None,
                "a stuck cell needs layer, index and bit")
        require(self.value in (0, 1), f"a stuck cell's value must be 0 or 1, got {self.value}")
        return self


@dataclass
class Profile:
    """A per-bit error map: ``rates`` (groups of bits with a probability) and ``stuck`` cells."""

    rates: list[RateRule] = field(default_factory=list)
    stuck: list[StuckCell] = field(default_factory=list)

    def bind(self, layers: Sequence[tuple[str, nn.Module]], path: str | Path = "profile") -> "BoundProfile":
        """Resolve the map against a model's quantized layers (one-line QfiError where it does not fit)."""
        return BoundProfile(self, layers, str(path))


class _Group(NamedTuple):
    """One rate rule on one layer: codes [start, stop), bit positions, probability, mode, code width."""

    rule: int
    start: int
    stop: int
    positions: list[int]
    p: float
    mode: str
    bits: int


def read_profile(path: str | Path) -> "Profile":
    """Read and check a profile map (JSON); a one-line QfiError names the file and the first mistake.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "map.json"
    >>> _ = p.write_text('{"rates": [{"layers": "fc", "bits": -1, "p": 0.5}], "stuck": []}')
    >>> read_profile(p).rates
    [RateRule(layers=['fc'], p=0.5, bits=[-1], start=0, stop=None, mode='flip')]
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QfiError(f"profile map not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QfiError(f"profile map {path} is not readable JSON ({type(e).__name__})") from None
    try:
        return section(Profile, data, "")
    except QfiError as e:
        raise QfiError(f"profile map {path}: {e}") from None


class BoundProfile:
    """A profile resolved against a model's quantized layers: what ``fault=profile`` injectors draw from."""

    def __init__(self, profile: Profile, layers: Sequence[tuple[str, nn.Module]], path: str) -> None:
        self.path = path
        self.rules: dict[str, list[_Group]] = {}
        self.stuck: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        self.total_bits = sum(m.weight.numel() * m.wbits for _, m in layers)
        self.expected = 0.0
        sizes = {name: (m.weight.numel(), int(m.wbits)) for name, m in layers}
        for i, rule in enumerate(profile.rates):
            matched = [n for n in sizes if any(fnmatch.fnmatchcase(n, p) for p in rule.layers)]
            if not matched:
                self._fail(f"rates[{i}]: layers {rule.layers} match no quantized layer ({', '.join(sizes)})")
            for name in matched:
                numel, bits = sizes[name]
                stop = numel if rule.stop is None else rule.stop
                if stop > numel:
                    self._fail(f"rates[{i}]: stop={stop} is beyond {name}'s {numel} codes")
                positions = self._positions(rule.bits, bits, f"rates[{i}]")
                for g in self.rules.get(name, []):
                    if rule.start < g.stop and g.start < stop and set(positions) & set(g.positions):
                        self._fail(f"rates[{g.rule}] and rates[{i}] both cover {name} codes "
                                   f"{max(rule.start, g.start)}..{min(stop, g.stop) - 1}: rules must not overlap")
                self.rules.setdefault(name, []).append(
                    _Group(i, rule.start, stop, positions, float(rule.p), rule.mode, bits))
                self.expected += float(rule.p) * (stop - rule.start) * len(positions)
        cells: dict[tuple[str, int, int], int] = {}
        for i, cell in enumerate(profile.stuck):
            if cell.layer not in sizes:
                self._fail(f"stuck[{i}]: no quantized layer is named {cell.layer!r} ({', '.join(sizes)})")
            numel, bits = sizes[cell.layer]
            if not 0 <= cell.index < numel:
                self._fail(f"stuck[{i}]: index {cell.index} is outside {cell.layer}'s {numel} codes")
            [bit] = self._positions([cell.bit], bits, f"stuck[{i}]")
            if cells.setdefault((cell.layer, cell.index, bit), cell.value) != cell.value:
                self._fail(f"stuck[{i}]: {cell.layer} code {cell.index} bit {bit} is stuck at both 0 and 1")
        for value in (0, 1):
            for name in sizes:
                picked = [(i, b) for (n, i, b), v in cells.items() if n == name and v == value]
                if picked:
                    pos = np.array(sorted(i * sizes[name][1] + b for i, b in picked), dtype=np.int64)
                    self.stuck.setdefault(name, []).append((f"stuck{value}", *positions_to_masks(pos, sizes[name][1])))

    def _fail(self, message: str) -> None:
        raise QfiError(f"profile map {self.path}: {message}")

    def _positions(self, positions: list[int] | None, bits: int, where: str) -> list[int]:
        try:
            return resolve_bits(positions, bits, f"{where}: bits") or list(range(bits))
        except QfiError as e:
            self._fail(str(e))

    @property
    def mean_rate(self) -> float:
        """Expected fraction of all stored weight bits that the rate rules make faulty (stuck cells aside)."""
        return self.expected / self.total_bits if self.total_bits else 0.0

    def faults(self, name: str, injector: Any, trial: int, key: str,
               draw: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Layer ``name``'s faults in ``trial``: ``(mode, code index, mask)`` per rule, then the stuck cells."""
        parts = []
        for g in self.rules.get(name, []):
            n = (g.stop - g.start) * len(g.positions)
            pos = NestedBitSampler(n, stream_key(injector.seed, trial, f"{key}#profile{g.rule}", draw)).positions(g.p)
            if pos.size:
                index, mask = positions_to_masks(pos, g.bits, g.positions)
                parts.append((g.mode, index + g.start, mask))
        return parts + self.stuck.get(name, [])

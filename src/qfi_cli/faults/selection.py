"""Which weight bits faults may reach: the layers ``fault.layers`` selects, the bit positions ``fault.bits`` allows,
and the bits ``fault.protect`` rules protect (ECC, hardened memory). One module, used by every fault source, the
injector and the sensitivity map.

>>> allowed_mask(None, [ProtectRule(bits=[-1]).validated()], "conv1", 4) == 0b0111
True
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import n_exposed_bits, resolve_bits
from qfi_cli.typed import require, section


@dataclass
class ProtectRule:
    """Stored weight bits that never fail: bit positions ``bits`` (0 = LSB, negative from the MSB; null = every
    bit) of the layers matching ``layers`` (fnmatch patterns; null = every layer). At least one must be set.

    >>> ProtectRule.from_dict({"bits": -1}), ProtectRule(layers="conv1").validated().layers
    (ProtectRule(layers=None, bits=[-1]), ['conv1'])
    """

    layers: Optional[list[str]] = None
    bits: Optional[list[int]] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "fault.protect[0]") -> "ProtectRule":
        return section(cls, d, path)

    def validated(self) -> "ProtectRule":
        if self.layers is not None:
            self.layers = [str(p) for p in (self.layers if isinstance(self.layers, list) else [self.layers])]
        if self.bits is not None:
            self.bits = [int(b) for b in (self.bits if isinstance(self.bits, list) else [self.bits])]
        require(self.layers is not None or self.bits is not None,
                "a fault.protect rule needs layers and/or bits (e.g. {bits: [-1]} or {layers: [conv1]})")
        require(self.layers != [] and self.bits != [], "fault.protect layers / bits must not be empty lists")
        return self

    def label(self) -> str:
        """Short text: ``conv1:7``, ``conv*``, ``*:-1``.

        >>> ProtectRule(layers=["conv1"], bits=[7]).label(), ProtectRule(bits=[-1]).label()
        ('conv1:7', '*:-1')
        """
        layers = ",".join(self.layers) if self.layers is not None else "*"
        return layers if self.bits is None else f"{layers}:{','.join(map(str, self.bits))}"


def matches(name: str, patterns: list[str]) -> bool:
    """Whether layer ``name`` matches any of the fnmatch ``patterns`` (case-sensitive).

    >>> matches("layer1.conv2", ["conv*", "layer1.*"]), matches("fc", ["conv*"])
    (True, False)
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(layers: Sequence[tuple[str, Any]], patterns: list[str] | None,
                  protect: Sequence[ProtectRule] = ()) -> list[tuple[str, Any]]:
    """The ``(name, layer)`` pairs ``fault.layers`` (``patterns``; None: all) selects; a one-line QfiError when the
    patterns, or a protect rule's layers, match no layer.

    >>> [n for n, _ in select_layers([("conv1", 0), ("fc", 1)], ["conv*"])]
    ['conv1']
    """
    chosen = [(n, m) for n, m in layers if patterns is None or matches(n, patterns)]
    names = ", ".join(n for n, _ in layers)
    if patterns is not None and not chosen:
        raise QfiError(f"fault.layers {patterns} match no quantized layer; layers are: {names}")
    for rule in protect:
        if rule.layers is not None and not any(matches(n, rule.layers) for n, _ in layers):
            raise QfiError(f"fault.protect layers {rule.layers} match no quantized layer; layers are: {names}")
    return chosen


def allowed_mask(bits_chosen: list[int] | None, protect: Sequence[ProtectRule], name: str, bits: int) -> int:
    """The bits of layer ``name``'s ``bits``-wide weight codes that may fail, as a mask: those ``fault.bits``
    (``bits_chosen``; None: all) selects, less those the ``protect`` rules protect.

    >>> bin(allowed_mask([0, 1, -1], [ProtectRule(layers=["fc"], bits=[0]).validated()], "fc", 8))
    '0b10000010'
    """
    chosen = resolve_bits(bits_chosen, bits, "fault.bits")
    mask = (1 << bits) - 1 if chosen is None else sum(1 << b for b in chosen)
    for rule in protect:
        if rule.layers is None or matches(name, rule.layers):
            protected = resolve_bits(rule.bits, bits, "fault.protect bits")
            mask &= 0 if protected is None else ~sum(1 << b for b in protected)
    return mask


def n_exposed(n_codes: int, bits: int, chosen: list[int] | None) -> int:
    """``n_exposed_bits`` that allows an empty selection (every bit of the layer protected: 0).

    >>> n_exposed(10, 8, None), n_exposed(10, 8, [7]), n_exposed(10, 8, [])
    (80, 10, 0)
    """
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

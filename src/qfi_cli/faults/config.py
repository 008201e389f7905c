"""The fault configuration (``fault`` section): which fault model (``fault.model``, a registered source of
``qfi_cli.faults.sources``), where and when; its rules, and its rules across sections, checked once when a config
is read (so the pre-check of a sweep runs them for every point before any runs).

``bitflip``: every exposed bit flips independently with probability ``ber``. ``stuck_at_0`` / ``stuck_at_1``:
every exposed bit is stuck at 0 / 1 with probability ``ber`` (a bit already at that value does not change).
``bitflip_count``: exactly ``count`` distinct exposed bits of the whole model flip (``ber`` is null).
``replay``: exactly the faulty bits a ``--save-faults`` file holds (``fault.file``), trial by trial.
``profile``: a measured per-bit error map (``fault.file``, see ``qfi_cli.faults.profile``).

``protect``: rules naming stored weight bits that never fail (ECC, hardened memory); see ``ProtectRule``.

``target``: which stored tensors take faults: ``weights`` (the weight codes), ``activations`` (the input codes of
every forward), ``both`` (the two), or a list of stored parts (``qfi_cli.faults.parts``: ``weights``, ``biases``,
``scales``, ``zero_points``) and maybe ``activations``. Every selected stored bit counts in ``bits_total``; at a
rate each one fails independently with probability ``ber``. ``scale_format``: how scales are stored (fp32, fp16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from qfi_cli.faults.parts import PARTS, SCALE_FORMATS
from qfi_cli.faults.selection import ProtectRule
from qfi_cli.faults.sources import FAULT_MODELS, FaultSource
from qfi_cli.typed import require, section

ACTIVATIONS = "activations"
TARGETS = ("weights", ACTIVATIONS, "both", *(p.name for p in PARTS.values() if p.name != "weights"))
PERSISTENCE = ("trial", "forward")


@dataclass
class FaultConfig:
    """What to inject, where and when.

    ``ber``: the bit error rate (``null`` for ``bitflip_count``, which flips exactly ``count`` bits); ``bits``:
    allowed bit positions (0 = LSB; negative counts from the MSB, so ``[-1]`` is the top bit at any width);
    ``layers``: fnmatch patterns of layer names (one string is one pattern); ``persistence``: ``trial`` (one
    pattern per trial, as memory faults are) or ``forward`` (a new pattern at every forward: transient faults).
    ``protect``: a list of ``ProtectRule`` (their union never fails); ``file``: the fault file of ``replay`` /
    ``profile``. ``target``: one name or a list (see the module docstring); ``bits`` and ``protect`` positions
    apply to every selected part at its own width (``-1`` is each part's top bit: a bias's sign bit, a code's MSB).

    >>> FaultConfig(ber=1e-3, bits=[-1]).validated().source.mode
    'flip'
    >>> FaultConfig.from_dict({"layers": "conv*", "bits": 7}).layers
    ['conv*']
    >>> FaultConfig(target=["biases", "weights", "scales"]).validated().parts
    ('weights', 'scales', 'biases')
    """

    model: str = "bitflip"
    ber: Optional[float] = 1e-4
    count: int = 0
    bits: Optional[list[int]] = None
    layers: Optional[list[str]] = None
    target: Any = "weights"
    persistence: str = "trial"
    enable_in_training: bool = False
    enable_in_inference: bool = True
    protect: list[ProtectRule] = field(default_factory=list)
    file: Optional[str] = None
    scale_format: str = "fp32"

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "fault") -> "FaultConfig":
        """Read (types checked, unknown keys refused) and validate a ``fault`` section."""
        return section(cls, d, path)

    @property
    def source(self) -> FaultSource:
        """The registered source of ``fault.model`` (a one-line QfiError names the known ones)."""
        return FAULT_MODELS.get(self.model)

    def validated(self) -> "FaultConfig":
        source = self.source
        require(int(self.count) >= 0, f"fault count must be >= 0, got {self.count}")
        self._check_target()
        require(self.persistence in PERSISTENCE,
                f"fault persistence must be one of {', '.join(PERSISTENCE)}, got {self.persistence!r}")
        require(self.scale_format in SCALE_FORMATS,
                f"fault.scale_format must be one of {', '.join(SCALE_FORMATS)}, got {self.scale_format!r}")
        source.validate(self)
        if self.bits is not None:
            self.bits = [int(b) for b in self.bits]
            require(len(self.bits) > 0, "fault.bits must name at least one bit position (or be null for all)")
        if self.layers is not None:
            self.layers = [str(p) for p in (self.layers if isinstance(self.layers, list) else [self.layers])]
            require(len(self.layers) > 0, "fault.layers must name at least one pattern (or be null for all)")
        self.protect = [r if isinstance(r, ProtectRule) else ProtectRule.from_dict(r, f"fault.protect[{i}]")
                        for i, r in enumerate(self.protect or [])]
        return self

    def _check_target(self) -> None:
        names = self.target if isinstance(self.target, list) else [self.target]
        bad = [n for n in names if not isinstance(n, str) or n not in TARGETS]
        require(bool(names) and not bad, f"fault target must be one of {', '.join(TARGETS)} (or a list of them), "
                                         f"got {bad[0] if bad else self.target!r}")
        if isinstance(self.target, list):
            self.target = [str(n) for n in self.target]
        if set(self.parts) - {"weights"}:  # written in place once per trial (faults.parts)
            require(self.persistence == "trial" and not self.enable_in_training,
                    f"fault.target {', '.join(p for p in self.parts if p != 'weights')} is written in place once "
                    "per trial: it needs fault.persistence=trial and fault.enable_in_training=false")

    @property
    def _names(self) -> set[str]:
        names = set(self.target if isinstance(self.target, list) else [self.target])
        return names | {"weights", ACTIVATIONS} if "both" in names else names

    @property
    def parts(self) -> tuple[str, ...]:
        """The stored parts ``target`` selects, in the registry's order (weight codes first)."""
        return tuple(p.name for p in PARTS.values() if p.name in self._names)

    @property
    def activations(self) -> bool:
        """Whether ``target`` selects the input activations."""
        return ACTIVATIONS in self._names

    @property
    def weights_only(self) -> bool:
        """Whether ``target`` selects the weight codes and nothing else (what sensitivity and fault files map)."""
        return self.parts == ("weights",) and not self.activations

    def check_run(self, cfg: Any, command: str) -> None:
        """The fault rules across sections of ``cfg`` (a ``RunConfig``) for ``command``: the source's own, then
        those of sensitivity and of recorded faults. ``RunConfig.validated`` runs them (so the pre-check does).

        >>> from types import SimpleNamespace as NS
        >>> FaultConfig(target="both").validated().check_run(NS(eval=NS(bers=None, save_faults=None)), "sensitivity")
        Traceback (most recent call last):
        ...
        qfi_cli.errors.QfiError: sensitivity maps stored weight bits: set fault.target=weights
        """
        if command == "sensitivity":
            drawn = [n for n in FAULT_MODELS.names() if FAULT_MODELS.get(n).per_cell]
            require(self.source.per_cell, f"sensitivity draws its own faults per cell: fault.model must be "
                                          f"{', '.join(drawn[:-1])} or {drawn[-1]}, not {self.model}")
            require(self.weights_only, "sensitivity maps stored weight bits: set fault.target=weights")
        self.source.check_run(cfg, command)
        if cfg.eval.save_faults is not None:
            self.check_recordable()

    def check_recordable(self) -> None:
        """``--save-faults`` records per-trial weight faults (a one-line QfiError otherwise)."""
        require(self.weights_only and self.persistence == "trial",
                "--save-faults records per-trial weight faults: it needs fault.target=weights and "
                "fault.persistence=trial")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

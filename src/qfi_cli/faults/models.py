"""Fault models by name, and the fault configuration that selects one.

``bitflip``: every exposed bit flips independently with probability ``ber``. ``stuck_at_0`` / ``stuck_at_1``:
every exposed bit is stuck at 0 / 1 with probability ``ber`` (a bit already at that value does not change).
``bitflip_count``: exactly ``count`` distinct exposed bits of the whole model flip (``ber`` is null).
``replay``: exactly the faulty bits a ``--save-faults`` file holds (``fault.file``), trial by trial.
``profile``: a measured per-bit error map (``fault.file``, see ``qfi_cli.faults.profile``).

``protect``: rules naming stored weight bits that never fail (ECC, hardened memory); see ``ProtectRule``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from qfi_cli.registry import Registry
from qfi_cli.typed import require, section


@dataclass(frozen=True)
class FaultModel:
    """How faulty bits change (``flip``, ``stuck0``, ``stuck1``), whether they come at a rate or a count, and
    where they come from (``sampler``: drawn; ``replay`` / ``profile``: a file, ``fault.file``)."""

    mode: str
    counted: bool = False
    source: str = "sampler"


FAULT_MODELS: Registry[FaultModel] = Registry("fault model")
FAULT_MODELS.register("bitflip")(FaultModel("flip"))
FAULT_MODELS.register("stuck_at_0")(FaultModel("stuck0"))
FAULT_MODELS.register("stuck_at_1")(FaultModel("stuck1"))
FAULT_MODELS.register("bitflip_count")(FaultModel("flip", counted=True))
FAULT_MODELS.register("replay")(FaultModel("flip", source="replay"))
FAULT_MODELS.register("profile")(FaultModel("flip", source="profile"))

TARGETS = ("weights", "activations", "both")
PERSISTENCE = ("trial", "forward")


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


@dataclass
class FaultConfig:
    """What to inject, where and when.

    ``ber``: the bit error rate (``null`` for ``bitflip_count``, which flips exactly ``count`` bits); ``bits``:
    allowed bit positions (0 = LSB; negative counts from the MSB, so ``[-1]`` is the top bit at any width);
    ``layers``: fnmatch patterns of layer names (one string is one pattern); ``persistence``: ``trial`` (one
    pattern per trial, as memory faults are) or ``forward`` (a new pattern at every forward: transient faults).
    ``protect``: a list of ``ProtectRule`` (their union never fails); ``file``: the fault file of ``replay`` /
    ``profile``.

    >>> FaultConfig(ber=1e-3, bits=[-1]).validated().fault_model.mode
    'flip'
    >>> FaultConfig.from_dict({"layers": "conv*", "bits": 7}).layers
    ['conv*']
    """

    model: str = "bitflip"
    ber: Optional[float] = 1e-4
    count: int = 0
    bits: Optional[list[int]] = None
    layers: Optional[list[str]] = None
    target: str = "weights"
    persistence: str = "trial"
    enable_in_training: bool = False
    enable_in_inference: bool = True
    protect: list[ProtectRule] = field(default_factory=list)
    file: Optional[str] = None
    fault_model: FaultModel = field(init=False, repr=False, compare=False, default=FaultModel("flip"))

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "fault") -> "FaultConfig":
        """Read (types checked, unknown keys refused) and validate a ``fault`` section."""
        return section(cls, d, path)

    def validated(self) -> "FaultConfig":
        self.fault_model = FAULT_MODELS.get(self.model)
        source = self.fault_model.source
        if source != "sampler":
            require(self.file is not None, f"fault.model={self.model} reads its faults from a file: set "
                                           f"fault.file=FILE")
            self.file = str(Path(self.file).expanduser())
            require(self.target == "weights", f"fault.model={self.model} applies to weights only: set "
                                              f"fault.target=weights")
            require(source != "profile" or self.ber is None,
                    "fault=profile takes its rates from the map in fault.file: set fault.ber=null")
            require(source != "replay" or self.persistence == "trial",
                    "fault=replay replays per-trial faults: set fault.persistence=trial")
            if self.ber is not None:
                require(0.0 <= float(self.ber) <= 1.0, f"ber must lie in [0, 1], got {self.ber}")
                self.ber = float(self.ber)
        elif self.fault_model.counted:
            require(self.ber is None, f"fault.model={self.model} flips exactly fault.count bits, so a rate does not "
                                      f"apply: use fault=count (or set fault.ber=null), or fault=bitflip for a rate")
        else:
            require(self.ber is not None, "ber must be set (a number in [0, 1])")
            require(0.0 <= float(self.ber) <= 1.0, f"ber must lie in [0, 1], got {self.ber}")
            self.ber = float(self.ber)
        require(int(self.count) >= 0, f"fault count must be >= 0, got {self.count}")
        require(self.target in TARGETS, f"fault target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        require(self.persistence in PERSISTENCE,
                f"fault persistence must be one of {', '.join(PERSISTENCE)}, got {self.persistence!r}")
        require(not (self.fault_model.counted and self.target != "weights"),
                "bitflip_count applies to weights only: set fault.target=weights")
        if self.bits is not None:
            self.bits = [int(b) for b in self.bits]
            require(len(self.bits) > 0, "fault.bits must name at least one bit position (or be null for all)")
        if self.layers is not None:
            self.layers = [str(p) for p in (self.layers if isinstance(self.layers, list) else [self.layers])]
            require(len(self.layers) > 0, "fault.layers must name at least one pattern (or be null for all)")
        self.protect = [r if isinstance(r, ProtectRule) else ProtectRule.from_dict(r, f"fault.protect[{i}]")
                        for i, r in enumerate(self.protect or [])]
        return self

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fault_model")
        return d

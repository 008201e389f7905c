"""Fault models by name, and the fault configuration that selects one.

``bitflip``: every exposed bit flips independently with probability ``ber``. ``stuck_at_0`` / ``stuck_at_1``:
every exposed bit is stuck at 0 / 1 with probability ``ber`` (a bit already at that value does not change).
``bitflip_count``: exactly ``count`` distinct exposed bits of the whole model flip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qfi_cli.errors import QfiError
from qfi_cli.registry import Registry


@dataclass(frozen=True)
class FaultModel:
    """How faulty bits change (``flip``, ``stuck0``, ``stuck1``) and whether they come at a rate or a count."""

    mode: str
    counted: bool = False


FAULT_MODELS: Registry[FaultModel] = Registry("fault model")
FAULT_MODELS.register("bitflip")(FaultModel("flip"))
FAULT_MODELS.register("stuck_at_0")(FaultModel("stuck0"))
FAULT_MODELS.register("stuck_at_1")(FaultModel("stuck1"))
FAULT_MODELS.register("bitflip_count")(FaultModel("flip", counted=True))

TARGETS = ("weights", "activations", "both")
PERSISTENCE = ("trial", "forward")


@dataclass
class FaultConfig:
    """What to inject, where and when.

    ``bits``: allowed bit positions (0 = LSB; negative counts from the MSB, so ``[-1]`` is the sign bit at any
    width); ``layers``: fnmatch patterns of layer names; ``persistence``: ``trial`` (one pattern per trial, as
    memory faults are) or ``forward`` (a new pattern at every forward: transient faults).

    >>> FaultConfig(ber=1e-3, bits=[-1]).validated().fault_model.mode
    'flip'
    """

    model: str = "bitflip"
    ber: float = 0.0
    count: int = 0
    bits: list[int] | None = None
    layers: list[str] | None = None
    target: str = "weights"
    persistence: str = "trial"
    enable_in_training: bool = False
    enable_in_inference: bool = True
    fault_model: FaultModel = field(init=False, repr=False, compare=False, default=FaultModel("flip"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FaultConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "fault_model"}
        return cls(**known).validated()

    def validated(self) -> "FaultConfig":
        self.fault_model = FAULT_MODELS.get(self.model)
        if not 0.0 <= float(self.ber) <= 1.0:
            raise QfiError(f"ber must lie in [0, 1], got {self.ber}")
        self.ber = float(self.ber)
        if int(self.count) < 0:
            raise QfiError(f"fault count must be >= 0, got {self.count}")
        if self.target not in TARGETS:
            raise QfiError(f"fault target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.persistence not in PERSISTENCE:
            raise QfiError(f"fault persistence must be one of {', '.join(PERSISTENCE)}, got {self.persistence!r}")
        if self.fault_model.counted and self.target != "weights":
            raise QfiError("bitflip_count applies to weights only: set fault.target=weights")
        self.bits = None if self.bits is None else [int(b) for b in self.bits]
        self.layers = None if self.layers is None else [str(p) for p in self.layers]
        return self

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fault_model")
        return d

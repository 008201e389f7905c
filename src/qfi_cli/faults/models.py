"""Fault models by name, and the fault configuration that selects one.

``bitflip``: every exposed bit flips independently with probability ``ber``. ``stuck_at_0`` / ``stuck_at_1``:
every exposed bit is stuck at 0 / 1 with probability ``ber`` (a bit already at that value does not change).
``bitflip_count``: exactly ``count`` distinct exposed bits of the whole model flip (``ber`` is null).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from qfi_cli.registry import Registry
from qfi_cli.typed import require, section


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

    ``ber``: the bit error rate (``null`` for ``bitflip_count``, which flips exactly ``count`` bits); ``bits``:
    allowed bit positions (0 = LSB; negative counts from the MSB, so ``[-1]`` is the top bit at any width);
    ``layers``: fnmatch patterns of layer names (one string is one pattern); ``persistence``: ``trial`` (one
    pattern per trial, as memory faults are) or ``forward`` (a new pattern at every forward: transient faults).

    >>> FaultConfig(ber=1e-3, bits=[-1]).validated().fault_model.mode
    'flip'
    >>> FaultConfig.from_dict({"layers": "conv*", "bits": 7}).layers
    ['conv*']
    """

    model: str = "bitflip"
    ber: Optional[float] = 0.0
    count: int = 0
    bits: Optional[list[int]] = None
    layers: Optional[list[str]] = None
    target: str = "weights"
    persistence: str = "trial"
    enable_in_training: bool = False
    enable_in_inference: bool = True
    fault_model: FaultModel = field(init=False, repr=False, compare=False, default=FaultModel("flip"))

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "fault") -> "FaultConfig":
        """Read (types checked, unknown keys refused) and validate a ``fault`` section."""
        return section(cls, d, path)

    def validated(self) -> "FaultConfig":
        self.fault_model = FAULT_MODELS.get(self.model)
        if self.fault_model.counted:
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
        return self

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fault_model")
        return d

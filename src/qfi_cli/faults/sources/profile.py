"""``fault=profile fault.file=MAP``: a measured per-bit error map (per layer address range and bit position a
failure probability, plus stuck cells; the format is ``qfi_cli.faults.profile``). One level without a rate: the map
holds the rates; results show its expected fraction of faulty bits as ``ber``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qfi_cli.faults.profile import BoundProfile, read_profile
from qfi_cli.faults.sources.base import At, Draw, FileSource, Level, NpMasks, merge_faults, register_fault_model
from qfi_cli.typed import require


@register_fault_model("profile")
class ProfileFaults(FileSource):
    """The faults a per-bit error map draws (its rules' bits by the nested sampler, then its stuck cells)."""

    def validate(self, fault: Any) -> None:
        super().validate(fault)
        require(fault.ber is None, "fault=profile takes its rates from the map in fault.file: set fault.ber=null")

    def check_run(self, cfg: Any, command: str) -> None:
        require(not cfg.eval.bers,
                "eval.bers does not apply to fault=profile (its rates come from the map in fault.file)")

    def levels(self, cfg: Any) -> list[Level]:
        return [(None, None)]

    def bind(self, injector: Any, layers: Sequence[tuple[str, Any]]) -> Draw:
        return ProfileDraw(injector, read_profile(injector.config.file).bind(layers, injector.config.file))


class ProfileDraw(Draw):
    """A profile bound to a model's layers."""

    def __init__(self, injector: Any, profile: BoundProfile) -> None:
        self.injector, self.profile = injector, profile

    def faults(self, at: At) -> tuple[np.ndarray, NpMasks]:
        return merge_faults(self.profile.faults(at.name, self.injector, at.trial, at.key, at.draw))

    def shown_ber(self, ber: float | None) -> float | None:
        return self.profile.mean_rate if ber is None else ber

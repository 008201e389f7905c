"""``fault=replay fault.file=FILE``: exactly the faulty bits a ``qfi inject-eval --save-faults FILE`` run recorded,
trial by trial (the file format is ``qfi_cli.faults.replay``). The trials and fault seed are the file's; the rates
are the file's, or those ``eval.bers`` / ``fault.ber`` pick.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qfi_cli.faults.replay import FaultFile, read_fault_file
from qfi_cli.faults.sources.base import At, Draw, FileSource, Level, NpMasks, check_rate, merge_faults, \
    register_fault_model
from qfi_cli.typed import require


@register_fault_model("replay")
class ReplayFaults(FileSource):
    """The faults of a ``--save-faults`` file, applied to a model with the same quantized layers."""

    def validate(self, fault: Any) -> None:
        super().validate(fault)
        require(fault.persistence == "trial", "fault=replay replays per-trial faults: set fault.persistence=trial")
        check_rate(fault)

    def levels(self, cfg: Any) -> list[Level]:
        saved = read_fault_file(cfg.fault.file)
        wanted = cfg.eval.bers or ([cfg.fault.ber] if cfg.fault.ber is not None else None)
        return saved.levels if wanted is None else [saved.levels[saved.level_of(b, None)] for b in sorted(set(wanted))]

    def bind(self, injector: Any, layers: Sequence[tuple[str, Any]]) -> Draw:
        return ReplayDraw(injector, read_fault_file(injector.config.file).bind(layers))


class ReplayDraw(Draw):
    """A fault file bound to a model: the rows of (the injector's rate, trial, layer)."""

    def __init__(self, injector: Any, file: FaultFile) -> None:
        self.injector, self.file = injector, file

    def faults(self, at: At) -> tuple[np.ndarray, NpMasks]:
        return merge_faults(self.file.faults(at.name, self.injector, at.trial, at.key, at.draw))

    def plan(self, trials: int, fault_seed: int) -> tuple[int, int]:
        return self.file.trials, self.file.meta.get("fault_seed", fault_seed)

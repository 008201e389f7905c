"""Fault sources, one module each, registered by ``fault.model`` name in ``FAULT_MODELS``: every module of this
package is imported here, so a new source is one file (and its ``conf/fault/<name>.yaml``), listed nowhere else.

``rate``: bitflip, stuck_at_0, stuck_at_1 (each exposed bit faulty with probability ``fault.ber``); ``count``:
bitflip_count (exactly ``fault.count`` bits); ``replay``: a ``--save-faults`` file; ``profile``: a per-bit error map.

>>> FAULT_MODELS.names()
['bitflip', 'bitflip_count', 'profile', 'replay', 'stuck_at_0', 'stuck_at_1']
"""

from __future__ import annotations

import importlib
import pkgutil

from qfi_cli.faults.sources.base import FAULT_MODELS, At, Draw, FaultSource, register_fault_model

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["FAULT_MODELS", "At", "Draw", "FaultSource", "register_fault_model"]

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


def import_sources() -> list[str]:
    """Import every module of this package (each registers its sources); returns their names, sorted."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


import_sources()

__all__ = ["FAULT_MODELS", "At", "Draw", "FaultSource", "import_sources", "register_fault_model"]

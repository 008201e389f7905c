"""Fault injection: exact bit-error sampling on integer codes, fault sources by name, and the FaultInjector."""

from qfi_cli.faults.config import FaultConfig
from qfi_cli.faults.injector import FaultInjector
from qfi_cli.faults.sources import FAULT_MODELS, FaultSource

__all__ = ["FAULT_MODELS", "FaultConfig", "FaultInjector", "FaultSource"]

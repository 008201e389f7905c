"""Fault injection: exact bit-error sampling on integer codes, fault models, and the FaultInjector."""

from qfi_cli.faults.injector import FaultInjector
from qfi_cli.faults.models import FAULT_MODELS, FaultConfig, FaultModel

__all__ = ["FAULT_MODELS", "FaultConfig", "FaultInjector", "FaultModel"]

"""Optimisers: SAM / ASAM on quantized weights."""

from qfi_cli.optim.sam import SAM, frozen_bn_stats

__all__ = ["SAM", "frozen_bn_stats"]

"""qfi: train quantized networks (with SAM) and measure how they survive bit errors in their stored weight codes."""

__version__ = "0.2.0"

"""Quantization: quantizers (LSQ, min-max), quantized layers and model conversion."""

from qfi_cli.quant.convert import calibrate, quantize_model, weight_bits_total
from qfi_cli.quant.layers import QuanConv2d, QuanLinear, frozen_weights, quantized_layers
from qfi_cli.quant.quantizers import QUANTIZERS, LSQQuantizer, MinMaxQuantizer, check_bits, code_range

__all__ = ["QUANTIZERS", "LSQQuantizer", "MinMaxQuantizer", "QuanConv2d", "QuanLinear", "calibrate",
           "check_bits", "code_range", "frozen_weights", "quantize_model", "quantized_layers", "weight_bits_total"]

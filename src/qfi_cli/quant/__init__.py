"""Quantization: quantizers (LSQ, min-max, RQuant), their storage record (Encoding), quantized layers, conversion."""

from qfi_cli.quant.convert import calibrate, quantize_model, weight_bits_total
from qfi_cli.quant.encoding import FLOAT_FORMATS, Encoding, Quantized, float_encoding
from qfi_cli.quant.layers import QuanConv2d, QuanLinear, frozen_weights, quantized_layers
from qfi_cli.quant.quantizers import (QUANTIZERS, LSQQuantizer, MinMaxQuantizer, Quantizer, RQuantizer, check_bits,
                                      code_range)

__all__ = ["FLOAT_FORMATS", "QUANTIZERS", "Encoding", "LSQQuantizer", "MinMaxQuantizer", "QuanConv2d", "QuanLinear",
           "Quantized", "Quantizer", "RQuantizer", "calibrate", "check_bits", "code_range", "float_encoding",
           "frozen_weights", "quantize_model", "quantized_layers", "weight_bits_total"]

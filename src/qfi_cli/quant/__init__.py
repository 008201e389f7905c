"""Quantization: quantizers (LSQ, min-max, affine, RQuant), their storage record (Encoding), quantized layers, conversion."""

from qfi_cli.quant.convert import (bits_all_at, calibrate, quantize_model, stored_record, stored_widths,
                                   weight_bits_total, widths_label)
from qfi_cli.quant.encoding import FLOAT_FORMATS, Encoding, Quantized, RQuantEncoding, float_encoding
from qfi_cli.quant.layers import QUANTIZED_TYPES, QuanConv2d, QuanLinear, frozen_weights, quantized_layers, quantizes
from qfi_cli.quant.layers_zoo import (QuanConv1d, QuanConv3d, QuanConvTranspose1d, QuanConvTranspose2d,
                                      QuanConvTranspose3d, QuanEmbedding, QuanMultiheadAttention, QuanWeight)
from qfi_cli.quant.torch_ao import AO_LABEL, AO_QUANTIZER, AoLayer, ao_uncovered, is_torch_ao
from qfi_cli.quant.quantizers import (QUANTIZERS, AffineQuantizer, LSQQuantizer, MinMaxQuantizer, Quantizer,
                                      RQuantizer, check_bits, code_range)

__all__ = ["AO_LABEL", "AO_QUANTIZER", "AffineQuantizer", "AoLayer", "Encoding", "FLOAT_FORMATS", "LSQQuantizer", "MinMaxQuantizer",
           "QUANTIZED_TYPES", "QUANTIZERS", "QuanConv1d", "QuanConv2d", "QuanConv3d", "QuanConvTranspose1d",
           "QuanConvTranspose2d", "QuanConvTranspose3d", "QuanEmbedding", "QuanLinear", "QuanMultiheadAttention",
           "QuanWeight", "Quantized", "Quantizer", "RQuantEncoding", "RQuantizer", "ao_uncovered", "bits_all_at",
           "calibrate", "check_bits", "code_range", "float_encoding", "frozen_weights", "is_torch_ao",
           "quantize_model", "quantized_layers", "quantizes", "stored_record", "stored_widths", "weight_bits_total",
           "widths_label"]

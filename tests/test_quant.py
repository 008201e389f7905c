"""Quantizers, quantized layers and model conversion."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.quant import (QUANTIZERS, AffineQuantizer, LSQQuantizer, MinMaxQuantizer, QuanConv2d, QuanLinear,
                           RQuantizer, check_bits, code_range, float_encoding, frozen_weights, quantize_model,
                           quantized_layers)
from tests.conftest import tiny_cnn


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("kind", [LSQQuantizer, MinMaxQuantizer])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codes_are_k_bit_integers_and_dequantize_exactly(bits, kind, per_channel):
    torch.manual_seed(bits)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    q = kind(per_channel=per_channel)
    w_q = q(w, bits)
    value, enc = q.quantize(w, bits)
    codes = enc.codes(value)
    scale = enc.scale
    lo, hi = code_range(bits, signed=True)
    assert codes.dtype == torch.int64 and codes.min() >= lo and codes.max() <= hi
    assert (enc.bits, enc.signed, enc.zero_point) == (bits, True, 0)
    assert scale.shape == ((6, 1, 1, 1) if per_channel else (1, 1, 1, 1))
    torch.testing.assert_close(w_q, codes.double() * scale, rtol=0, atol=0)
    # the record decodes its own patterns back to the value, whole and at a subset of flat positions
    torch.testing.assert_close(enc.decode(enc.encode(w_q), dtype=w.dtype), w_q, rtol=0, atol=0)
    index = torch.tensor([0, 7, 53, 161])
    flat = w_q.reshape(-1)[index]
    torch.testing.assert_close(enc.decode(enc.encode(flat, index), index, dtype=w.dtype), flat, rtol=0, atol=0)
    # quantization error is at most half a step inside the clipping range
    inside = (w / scale).abs() <= hi
    assert ((w_q - w).abs() <= scale / 2 + 1e-12)[inside].all()


def test_minmax_maps_max_magnitude_to_top_code():
    w = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, -0.05]], dtype=torch.float64)
    value, enc = MinMaxQuantizer(per_channel=True).quantize(w, 4)
    codes = enc.codes(value)
    assert codes[0].tolist() == [2, -7, 4] and codes[1].abs().max() == 7


def test_unsigned_activations():
    x = torch.rand(4, 10, dtype=torch.float64)
    for q in (LSQQuantizer(), MinMaxQuantizer()):
        q(x, 4, is_activation=True)
        value, enc = q.quantize(x, 4, is_activation=True)
        codes = enc.codes(value)
        assert enc.signed is False and codes.min() >= 0 and codes.max() <= 15


@pytest.mark.parametrize("bits", range(2, 9))
def test_affine_codes_are_unsigned_and_cover_the_layer_range(bits):
    """Affine: scale (max - min) / (2^k - 1), integer zero point, codes in [0, 2^k - 1], min and max representable
    within half a step, value = (code - zero_point) * scale exactly."""
    torch.manual_seed(bits)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64) * 0.3 + 0.05
    value, enc = AffineQuantizer().quantize(w, bits)
    codes = enc.codes(value)
    scale = float(enc.scale)
    assert not enc.signed and codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert scale == pytest.approx(float(w.max() - w.min()) / (2**bits - 1), rel=1e-12)
    assert enc.zero_point == round(float(-w.min()) / scale)
    torch.testing.assert_close(value, (codes - enc.zero_point).double() * scale, rtol=0, atol=0)
    assert (value - w).abs().max() <= scale / 2 + 1e-12  # the whole range [min, max] is inside the code range
    assert (enc.encode(value) == codes).all()  # unsigned codes are stored as themselves


def test_affine_msb_flip_hand_computed():
    """4-bit affine quantization of [-0.5, 1.0]: scale 0.1, zero point 5; weight 0.3 is code 8 = 0b1000: flipping the top bit
    gives code 0, i.e. (0 - 5) * 0.1 = -0.5; weight -0.2 is code 3 = 0b0011 -> 0b1011 = 11 -> 0.6."""
    from qfi_cli.faults import FaultConfig, FaultInjector

    w = torch.tensor([[-0.5, 0.3, -0.2, 1.0]], dtype=torch.float64)
    layer = QuanLinear.from_float(nn.Linear(4, 1, bias=False).double(), AffineQuantizer(), AffineQuantizer(), 4,
                                  32).eval()
    with torch.no_grad():
        layer.weight.copy_(w)
    value, enc = layer.quantize_weight_clean()
    assert enc.codes(value).tolist() == [[0, 8, 3, 15]] and enc.zero_point == 5
    with FaultInjector(layer, FaultConfig(ber=1.0, bits=[-1])) as inj, frozen_weights(layer):
        with inj.trial(0):
            faulty = layer.frozen_weight.clone()
    torch.testing.assert_close(faulty, torch.tensor([[0.3, -0.5, 0.6, 0.2]], dtype=torch.float64), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("kind", [RQuantizer, AffineQuantizer])
def test_rquant_and_affine_are_per_layer(kind):
    """The user's rule is written once (QuantConfig, from the class's PER_CHANNEL); the constructor keeps its own
    invariant as a plain error."""
    from qfi_cli.config import QuantConfig

    name = {RQuantizer: "rquant", AffineQuantizer: "affine"}[kind]
    assert kind.PER_CHANNEL is False and QUANTIZERS.get(name) is kind
    with pytest.raises(QfiError, match="per_channel=false"):
        QuantConfig(name=name, per_channel=True).validated()
    with pytest.raises(ValueError, match="no per-channel scales"):
        kind(per_channel=True)


@pytest.mark.parametrize("x", [[0.2, 0.37, 0.9], [-0.9, -0.37, -0.2], [0.37, 0.37]])
def test_affine_keeps_one_signed_and_constant_tensors(x):
    """The affine range always holds the data: U(0.2, 0.9) was represented on [0.203, 0.698] only (max error 0.20)
    and a constant 0.37 became 2.6e-10 when the zero point was clamped without widening the scale. Now every entry
    is within half a step of itself, the step being max(|x|) / 255 at 8 bits."""
    w = torch.tensor(x)
    value = AffineQuantizer()(w, 8)
    assert (value - w).abs().max() <= w.abs().max() / 255 / 2 * (1 + 1e-6)


def test_affine_straight_through_gradient_reaches_every_weight():
    """The rounded zero point puts one end of the range up to half a step outside the grid; those weights still get
    their gradient (the clamp of the old quantizer cut it: 6.1% of a trained RandBET model's weights)."""
    w = torch.tensor([-0.3, -0.1, 0.0, 0.4, 0.4999], requires_grad=True)
    AffineQuantizer()(w, 2).mul(torch.arange(1.0, 6.0)).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_float_encodings_match_hand_computed_ieee_patterns():
    """fp32 / fp16 / bf16 patterns: 1.0 = 0x3F800000 / 0x3C00 / 0x3F80 (exponent 011..1, mantissa 0); -2.0 sets the
    sign bit. Flipping the exponent's top bit of 1.0 sets every exponent bit: infinity. Of 0.5 (exponent 011..10):
    2**(2**(e-1)) / 2, i.e. 2**127 (fp32, bf16) and 2**15 = 32768 (fp16), a huge finite value."""
    cases = {"fp32": (0x3F800000, 0xC0000000, 30, 2.0**127), "fp16": (0x3C00, 0xC000, 14, 32768.0),
             "bf16": (0x3F80, 0xC000, 14, 2.0**127)}
    for fmt, (one, minus_two, exp_msb, huge) in cases.items():
        enc = float_encoding(fmt)
        assert enc.encode(torch.tensor([1.0, -2.0])).tolist() == [one, minus_two]
        assert enc.decode(torch.tensor([one ^ (1 << (enc.bits - 1))])).item() == -1.0   # sign flip
        assert enc.decode(torch.tensor([one ^ (1 << exp_msb)])).item() == math.inf
        half = int(enc.encode(torch.tensor([0.5]))[0])
        assert enc.decode(torch.tensor([half ^ (1 << exp_msb)])).item() == huge


def test_lsq_step_gradient_matches_paper():
    """d x_q / d s = round(x/s) - x/s inside the range, Qn or Qp outside, scaled by g = 1/sqrt(N * Qp)."""
    torch.manual_seed(0)
    x = torch.randn(50, dtype=torch.float64) * 2
    q = LSQQuantizer()
    q(x, 3)
    s = q.step.detach().clone()
    q.step.grad = None
    q(x, 3).sum().backward()
    v = x / s
    qn, qp = code_range(3, True)
    local = torch.where(v <= qn, torch.full_like(v, qn), torch.where(v >= qp, torch.full_like(v, qp), v.round() - v))
    expected = local.sum() / math.sqrt(x.numel() * qp)
    torch.testing.assert_close(q.step.grad.reshape(()), expected, rtol=1e-12, atol=1e-15)


def test_32_bits_is_pass_through():
    x = torch.randn(5, 5)
    for q in (LSQQuantizer(), MinMaxQuantizer()):
        assert q(x, 32) is x


@pytest.mark.parametrize("bits", [1, 9, 16, 0, 2.5])
def test_invalid_bit_widths_are_user_errors(bits):
    with pytest.raises(QfiError, match="2..8 or 32"):
        check_bits(bits)


def test_layers_keep_conv_and_linear_semantics_at_32_bits():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True).double()
    qconv = QuanConv2d.from_float(conv, LSQQuantizer(), LSQQuantizer(), 32, 32)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    assert torch.equal(qconv(x), conv(x))
    assert (qconv.stride, qconv.padding, qconv.dilation, qconv.groups) == ((2, 2), (2, 2), (2, 2), 2)
    fc = nn.Linear(7, 3).double()
    qfc = QuanLinear.from_float(fc, MinMaxQuantizer(), MinMaxQuantizer(), 32, 32)
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(qfc(x), fc(x))


def test_converter_first_last_policy_and_types():
    model = quantize_model(tiny_cnn(), wbits=4, abits=4)
    layers = quantized_layers(model)
    assert [type(m) for _, m in layers] == [QuanConv2d, QuanConv2d, QuanLinear]
    assert [(m.wbits, m.abits) for _, m in layers] == [(8, 8), (4, 4), (8, 8)]
    same = quantize_model(tiny_cnn(), wbits=4, abits=4, first_last_bits=None)
    assert [m.wbits for _, m in quantized_layers(same)] == [4, 4, 4]
    with pytest.raises(QfiError, match="unknown quantizer"):
        quantize_model(tiny_cnn(), "nope")


def test_frozen_weights_give_identical_outputs_and_are_released():
    model = quantize_model(tiny_cnn(), wbits=4, abits=8).eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    model(x)  # initialise activation step sizes
    live = model(x)
    with frozen_weights(model):
        assert torch.equal(model(x), live)
        calls = []
        layer = quantized_layers(model)[1][1]
        layer.__dict__["quan_w_fn"] = lambda *a, **k: calls.append(1)
        model(x)
        del layer.__dict__["quan_w_fn"]
        assert calls == [], "frozen weights must not be re-quantized per batch"
    assert all(m.frozen_weight is None for _, m in quantized_layers(model))


def test_state_dict_round_trip_reproduces_outputs():
    model = quantize_model(tiny_cnn(), wbits=4, abits=4, per_channel=True).eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    out = model(x)
    fresh = quantize_model(tiny_cnn(seed=5), wbits=4, abits=4, per_channel=True).eval()
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    assert torch.equal(fresh(x), out)


@pytest.mark.parametrize("numel", [1000, (1 << 17) + 1, 3 * (1 << 17) + 12_345])
def test_evaluation_fake_quantize_is_bit_identical_to_the_composite_in_pieces_or_whole(numel):
    """Without autograd, fake_quantize computes large CPU tensors in cache-sized pieces (and small ones whole);
    every entry must still be exactly round(clamp(x / s)) * s, a piece's boundary included."""
    from qfi_cli.quant.quantizers import _CHUNK, fake_quantize

    assert numel <= _CHUNK or numel % _CHUNK  # a tail piece shorter than the others
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 4
    x[::977] = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0]).repeat(numel // 977 // 5 + 1)[
        :x[::977].numel()]
    scale = torch.tensor(0.0371).view(1, 1, 1)  # shaped as LSQ's activation step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "output ... was resized" for a piece written through out=
        with torch.no_grad():
            got = fake_quantize(x.view(-1, 1, 1), scale, -128, 127).view(-1)
    want = (torch.round(torch.clamp(x / scale, -128, 127)) * scale).view(-1)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_equals_the_round_ste_composite_in_values_and_gradients(per_channel):
    """fake_quantize's one autograd node gives bit for bit the values and gradients (to x and the scale) that
    autograd takes through round_ste(clamp(x / s, qn, qp)) * s, entries on the clamp bounds included."""
    from qfi_cli.quant.quantizers import fake_quantize
    from tests.reference import round_ste

    g = torch.Generator().manual_seed(3)
    s = (torch.rand((8, 1, 1, 1) if per_channel else (), generator=g) + 0.1).requires_grad_()
    x = torch.randn(8, 4, 3, 3, generator=g) * 3
    s0 = s.detach().reshape(-1)[0]  # the scale of x[0]
    x[0, 0, 0] = torch.stack([-8 * s0, 7 * s0, 7.5 * s0])  # on the bounds and past one
    x.requires_grad_()
    up = torch.randn(x.shape, generator=g)
    got = fake_quantize(x, s, -8, 7)
    want = round_ste(torch.clamp(x / s, -8, 7)) * s
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, s), up), torch.autograd.grad(want, (x, s), up)):
        assert torch.equal(a, b)


def test_the_layer_mapping_is_one_table_by_exact_type():
    """``quantize_model`` converts exactly the rows of QUANTIZED_TYPES (a subclass of a row is not converted), and a
    new layer type is one entry plus its quantized class (Conv1d here, shaped as the next layer types will be)."""
    from unittest import mock

    from qfi_cli.quant import QUANTIZED_TYPES, quantizes
    from qfi_cli.quant.layers import QuanConvMixin

    assert QUANTIZED_TYPES[nn.Conv2d] is QuanConv2d and QUANTIZED_TYPES[nn.Linear] is QuanLinear

    class MyLinear(nn.Linear):
        pass

    with pytest.warns(UserWarning, match=r"stay float .*: 0 \(MyLinear\), 2 \(PReLU\)"):
        m = quantize_model(nn.Sequential(MyLinear(3, 3), nn.Linear(3, 2), nn.PReLU()), first_last_bits=None)
    assert [type(layer) for layer in m] == [MyLinear, QuanLinear, nn.PReLU]
    with mock.patch.dict(QUANTIZED_TYPES):
        del QUANTIZED_TYPES[nn.Conv1d]

        @quantizes(nn.Conv1d)
        class QuanConv1d(QuanConvMixin, nn.Conv1d):
            pass

        with pytest.raises(ValueError, match="quantized twin already"):
            quantizes(nn.Conv1d)(QuanConv1d)
        torch.manual_seed(0)
        float_conv = nn.Conv1d(2, 4, 3, padding=1)
        x = torch.randn(5, 2, 7)
        model = quantize_model(nn.Sequential(float_conv), "minmax", wbits=32, abits=32, first_last_bits=None)
        assert isinstance(model[0], QuanConv1d) and model[0].wbits == 32
        assert torch.equal(model(x), nn.functional.conv1d(x, float_conv.weight, float_conv.bias, padding=1))
        q8 = quantize_model(nn.Sequential(nn.Conv1d(2, 4, 3)), "minmax", wbits=4, abits=8, first_last_bits=None)
        with frozen_weights(q8):
            assert q8[0].frozen_encoding.bits == 4
    assert nn.Conv1d in QUANTIZED_TYPES and QUANTIZED_TYPES[nn.Conv1d] is not QuanConv1d

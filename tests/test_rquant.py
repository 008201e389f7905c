"""RQuant is Stutz et al.'s robust quantization as their code does it (random-bit-error-robustness,
common/quantization.py: ClippedAdaptiveAlternativeUnsymmetricUnsignedRoundedFixedPointQuantization).

Their formulas, read from that file and written here in our own words: per tensor, clamp to [-R, R] (R: the clipping
bound), take lo = min and hi = max, map to t = 2 (x - lo) / (hi - lo) - 1; the inner unsigned fixed-point quantizer
(range 1, m bits) has step delta = (1 + 0.001) / (2^(m-1) - 1) and stores round(min(clamp(t, -1, 1) / delta +
2^(m-1), 2^m - 1)) as uint8; decoding clamps the code to [0, 2^m - 1], subtracts 2^(m-1), multiplies by delta,
clamps to [-1, 1], maps back with (d + 1) / 2 * (hi - lo) + lo and clamps to [lo, hi]. Training copies the quantized
model's gradients onto the float weights: the straight-through gradient is the identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.quant import AffineQuantizer, QuanLinear, RQuantizer, frozen_weights


def reference(w: torch.Tensor, m: int, clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Their quantize + dequantize, as a float32 torch sequence in their order with their Python scalars."""
    t = w.float() if clip is None else torch.clamp(w.float(), -clip, clip)
    hi, lo = torch.max(t).item(), torch.min(t).item()
    t = torch.clamp(t, min=lo, max=hi)
    t = (t - lo) / (hi - lo)
    t = t * 2 - 1
    delta = (1 + 0.001) / (2 ** (m - 1) - 1)
    q = torch.clamp(t, min=-1, max=1) / delta
    q += 2 ** (m - 1)
    q = torch.round(torch.clamp(q, max=2**m - 1)).to(torch.uint8)
    d = torch.clamp(q.to(torch.float32), min=0, max=2**m - 1) - 2 ** (m - 1)
    d = torch.clamp(d * delta, min=-1, max=1)
    d = (d + 1) / 2
    d = torch.clamp(d * (hi - lo) + lo, min=lo, max=hi)
    return q.long(), d


def bits_of(x: torch.Tensor) -> torch.Tensor:
    return x.float().contiguous().view(torch.int32)


# hand-computed: (weights, bits, codes, decoded values) ------------------------------------------------------------
# 2 bits, [-1, 2]: delta 1.001; t = -1, -1/3, 0, 1 -> t/1.001 + 2 = 1.001, 1.667, 2, 2.999 -> codes 1, 2, 2, 3;
#   code 2 -> d 0 -> 0.5, code 3 -> d 1.001 clamped to 1 -> 2. Three levels, not four.
# 4 bits, [-0.5, 1]: delta 1.001/7; t = -1, 1/15, -0.6, 1 -> 1.007, 8.466, 3.804, 14.993 -> codes 1, 8, 4, 15;
#   code 8 -> 0.25, code 4 -> d = -4 delta = -0.572 -> 0.214 * 1.5 - 0.5 = -0.17900.
# 8 bits, one-signed [0.2, 0.9]: delta 1.001/127; t(0.37) = 2 * 0.17 / 0.7 - 1 = -0.514286 -> 62.751 -> code 63;
#   code 63 -> d = -65 delta = -0.512323 -> 0.243839 * 0.7 + 0.2 = 0.370687 (the old quantizer kept only
#   [0.203, 0.698] of this tensor).
DELTA4, DELTA8 = 1.001 / 7, 1.001 / 127
HAND = [
    ([-1.0, 0.0, 0.5, 2.0], 2, [1, 2, 2, 3], [-1.0, 0.5, 0.5, 2.0]),
    ([-0.5, 0.3, -0.2, 1.0], 4, [1, 8, 4, 15], [-0.5, 0.25, (1 - 4 * DELTA4) / 2 * 1.5 - 0.5, 1.0]),
    ([0.2, 0.37, 0.9], 8, [1, 63, 255], [0.2, (1 - 65 * DELTA8) / 2 * 0.7 + 0.2, 0.9]),
    ([0.37, 0.37, 0.37], 4, [0, 0, 0], [0.37, 0.37, 0.37]),  # constant: their 0/0 -> NaN codes cast to 0
]


@pytest.mark.parametrize("w,bits,codes,values", HAND)
def test_rquant_codes_and_values_hand_computed(w, bits, codes, values):
    value, enc = RQuantizer().quantize(torch.tensor(w), bits)
    assert enc.codes(value).tolist() == codes
    assert value.tolist() == pytest.approx(values, abs=1e-6)  # float32 arithmetic of the hand-computed decimals
    assert enc.signed is False and enc.code_range() == (0, 2**bits - 1)


def test_rquant_msb_flips_hand_computed():
    """4-bit [-0.5, 0.3, -0.2, 1.0] = codes 1, 8, 4, 15; the top bit flipped: 9, 0, 12, 7. Code 9 -> d = delta ->
    (1 + delta) / 2 * 1.5 - 0.5; code 0 (never stored) -> d = -8 delta, clamped to -1 -> -0.5; code 12 -> 4 delta;
    code 7 -> -delta. Every faulty value stays inside [lo, hi]."""
    layer = QuanLinear.from_float(nn.Linear(4, 1, bias=False), RQuantizer(), RQuantizer(), 4, 32).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.5, 0.3, -0.2, 1.0]]))
    with FaultInjector(layer, FaultConfig(ber=1.0, bits=[-1])) as inj, frozen_weights(layer):
        with inj.trial(0):
            faulty = layer.frozen_weight.clone()
    expected = [(1 + d) / 2 * 1.5 - 0.5 for d in (DELTA4, -1.0, 4 * DELTA4, -DELTA4)]
    assert faulty.reshape(-1).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rquant_has_two_to_the_m_minus_one_levels(bits):
    value = RQuantizer()(torch.linspace(-1.0, 3.0, 20_001), bits)
    assert value.unique().numel() == 2**bits - 1


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape", ["normal", "one-signed", "negative", "wide"])
@pytest.mark.parametrize("clip", [None, 0.1])
def test_rquant_agrees_with_the_reference_bit_for_bit(bits, shape, clip):
    """Codes and decoded float32 values equal the reference's for every entry (100% agreement), through torch and
    through the numpy path that in-place trials use; every one of the 2^m codes decodes as the reference would."""
    g = torch.Generator().manual_seed(bits)
    w = {"normal": torch.randn(4096, generator=g) * 0.1, "one-signed": torch.rand(4096, generator=g) * 0.7 + 0.2,
         "negative": -torch.rand(64, 65, generator=g) * 0.05, "wide": torch.randn(300, 7, generator=g) * 3}[shape]
    codes, values = reference(w, bits, clip)
    value, enc = RQuantizer(max_abs=clip).quantize(w, bits)
    if codes.unique().numel() > 1:  # (clipping one-signed data to 0.1 leaves a constant tensor)
        assert torch.equal(enc.codes(value), codes)
        assert np.array_equal(enc.codes(value.numpy()), codes.numpy())
    assert torch.equal(bits_of(value), bits_of(values))
    every = torch.arange(2**bits)
    hi, lo = float(values.max()), float(values.min())
    ref = torch.clamp((torch.clamp((every.float() - 2 ** (bits - 1)) * ((1 + 0.001) / (2 ** (bits - 1) - 1)), -1, 1)
                       + 1) / 2 * (hi - lo) + lo, lo, hi)
    if codes.unique().numel() > 1:
        assert torch.equal(bits_of(enc.decode(every)), bits_of(ref))
        assert np.array_equal(enc.decode(every.numpy(), dtype=np.float32).view(np.int32), bits_of(ref).numpy())


def test_rquant_straight_through_gradient_is_the_identity_for_every_weight():
    """Their training copies the quantized model's gradient onto every float weight; so does qfi's RQuant, also for
    weights clipped by the bound and at the ends of the range."""
    w = torch.tensor([-0.5, -0.05, 0.0, 0.03, 0.2], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    (RQuantizer(max_abs=0.1)(w, 4) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


def test_old_affine_quantizer_is_not_rquant():
    """What the issue measured: the affine grid (2^m levels, zero point) agrees with RQuant's codes on few entries."""
    w = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.1
    ref_codes, _ = reference(w, 8)
    value, enc = AffineQuantizer().quantize(w, 8)
    agree = (enc.codes(value) == ref_codes).float().mean().item()
    assert agree < 0.9
    assert AffineQuantizer()(torch.linspace(-1, 3, 20_001), 2).unique().numel() == 4

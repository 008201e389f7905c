"""Faults in a layer's other stored parts (``fault.target``: biases, scales, zero points; ``qfi_cli.faults.parts``):
exact IEEE / integer bit semantics derived by hand, in-place trials undone bit for bit, the sampler's statistics over
all selected bits together, ``bits_total`` / ``bits_by_part``, the config rules, and an inject-eval run."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qfi_cli.config import RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.quant import Encoding, frozen_weights, quantize_model
from tests.helpers import compose, qfi


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def two_layers(quantizer: str = "lsq", per_channel: bool = False, bias: tuple | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    if bias is not None:
        with torch.no_grad():
            model[0].bias.copy_(torch.tensor(bias))
    return quantize_model(model, quantizer=quantizer, per_channel=per_channel, wbits=8, abits=32,
                          first_last_bits=None).eval()


def raw(t: torch.Tensor) -> torch.Tensor:
    """A float32 tensor's bit patterns (NaN-proof equality)."""
    return t.detach().clone().view(torch.int32)


def test_bias_sign_and_exponent_bits_give_the_hand_computed_floats():
    # 0.5 = 0x3F000000 (exponent 126); -2.0 = 0xC0000000 (exponent 128); 1.5 = 0x3FC00000; -0.75 = 0xBF400000
    model = two_layers(bias=(0.5, -2.0, 1.5, -0.75, 0.5, 0.5, 0.5, 0.5))
    cases = {31: [-0.5, 2.0, -1.5, 0.75],  # sign bit: negated
             # top exponent bit: 126 -> 254 (2**127), 128 -> 0 (a zero), 127 -> 255 with a mantissa (NaN)
             30: [2.0**127, -0.0, f32(0x3FC00000 ^ 1 << 30), -(2.0**127) * 1.5],
             23: [1.0, -4.0, 0.75, -1.5]}  # exponent LSB: 126 -> 127, 128 -> 129, 127 -> 126, 126 -> 127
    for bit, expected in cases.items():
        fault = FaultConfig(ber=1.0, target="biases", bits=[bit], layers=["0"])
        with FaultInjector(model, fault, seed=0) as inj, frozen_weights(model):
            with inj.trial(0):
                got = model[0].bias[:4].tolist()
                assert inj.flips_by_part() == {"biases": 8} and inj.flips_total() == 8
            assert model[0].bias[:4].tolist() == [0.5, -2.0, 1.5, -0.75]
        for g, e in zip(got, expected):
            assert f32_bits(g) == f32_bits(e), (bit, got, expected)
    assert math.isnan(cases[30][2]) and f32_bits(-0.0) == 0x80000000


@pytest.mark.parametrize("fmt,exp_lsb", [("fp32", 23), ("fp16", 10)])
@pytest.mark.parametrize("quantizer,per_channel", [("minmax", True), ("lsq", False)])
def test_a_scale_bit_changes_exactly_the_governed_weights_by_the_hand_computed_factor(fmt, exp_lsb, quantizer,
                                                                                       per_channel):
    model = two_layers(quantizer, per_channel)
    fault = FaultConfig(model="bitflip_count", ber=None, count=1, target="scales", bits=[exp_lsb], layers=["0"],
                        scale_format=fmt)
    with frozen_weights(model), FaultInjector(model, fault, seed=3) as inj:
        layer = model[0]
        clean_w, scale = layer.frozen_weight.clone(), layer.frozen_encoding.scale.detach().reshape(-1).clone()
        codes = torch.round(clean_w / layer.frozen_encoding.scale).reshape(-1)
        with inj.trial(0):
            faulty_w = layer.frozen_weight.clone().reshape(-1)
        assert inj.flips_by_part() == {"scales": 1}
        changed = (faulty_w != clean_w.reshape(-1)).nonzero().reshape(-1)
        group = clean_w.numel() // scale.numel()
        j = int(changed[0]) // group
        governed = torch.arange(j * group, (j + 1) * group) if scale.numel() > 1 else torch.arange(clean_w.numel())
        outside = torch.ones(clean_w.numel(), dtype=torch.bool)
        outside[governed] = False
        assert torch.equal(faulty_w[outside], clean_w.reshape(-1)[outside])
        s = float(scale[j])
        if fmt == "fp32":  # the exponent LSB of the fp32 pattern: set -> halves, clear -> doubles
            faulty_s = s / 2 if f32_bits(s) >> 23 & 1 else s * 2
        else:  # the fp16 pattern of s (rounded to fp16), exponent LSB (bit 10) flipped
            h = int(np.float16(s).view(np.uint16))
            faulty_s = float(np.uint16(h ^ (1 << 10)).view(np.float16))
        expected = (codes[governed] * torch.tensor(faulty_s, dtype=torch.float32)).to(torch.float32)
        assert torch.equal(faulty_w[governed], expected)
        assert torch.equal(raw(layer.frozen_weight), raw(clean_w))
        assert torch.equal(layer.frozen_encoding.scale.reshape(-1), scale)  # the quantizer's scale untouched


def test_group_scales_govern_their_groups():
    """Scale j of a group-wise encoding (``Encoding.group``) governs flat entries [j*group, (j+1)*group)."""
    model = two_layers("minmax")
    with frozen_weights(model):
        layer = model[0]  # 8 x 16 weights as 32 groups of 4, each with its own scale 2**-k
        scale = torch.tensor([2.0 ** -(1 + k % 5) for k in range(32)])
        codes = torch.arange(128, dtype=torch.float32).remainder(7).sub(3)
        layer.frozen_encoding = Encoding(bits=8, scale=scale, group=4)
        layer.frozen_weight = (codes * scale.repeat_interleave(4)).view(8, 16)
        clean = layer.frozen_weight.clone()
        fault = FaultConfig(ber=1.0, target="scales", bits=[31], layers=["0"])  # every scale's sign bit
        with FaultInjector(model, fault, seed=0) as inj:
            assert inj.exposed_bits_by_part() == {"scales": 32}
            with inj.trial(0):
                assert torch.equal(layer.frozen_weight, -clean)
            assert torch.equal(layer.frozen_weight, clean)


def test_a_zero_point_bit_shifts_every_weight_by_the_hand_computed_step():
    model = two_layers("affine")
    fault = FaultConfig(ber=1.0, target="zero_points", bits=[0], layers=["2"])
    with frozen_weights(model), FaultInjector(model, fault, seed=0) as inj:
        layer = model[2]
        enc, clean = layer.frozen_encoding, layer.frozen_weight.clone()
        zp, s = enc.zero_point, float(enc.scale)
        codes = torch.round(clean / enc.scale) + zp
        with inj.trial(0):
            faulty = layer.frozen_weight.clone()
        assert inj.flips_by_part() == {"zero_points": 1}
        assert torch.equal(faulty, (codes - (zp ^ 1)) * enc.scale)  # float32 products, as stored
        assert s > 0 and zp > 0
        assert torch.equal(layer.frozen_weight, clean)


def test_every_part_is_restored_bit_for_bit_and_codes_compose_with_scales():
    model = two_layers("affine")
    fault = FaultConfig(ber=0.05, target=["weights", "biases", "scales", "zero_points"])
    x = torch.randn(5, 16)
    with FaultInjector(model, fault, seed=1) as inj, frozen_weights(model):
        clean_out = model(x)
        before = [(raw(m.frozen_weight), raw(m.bias)) for _, m in inj.layers]
        for t in range(30):
            with inj.trial(t):
                model(x)
            assert all(inj.flips_by_part()[p] >= 0 for p in inj.parts)
        after = [(raw(m.frozen_weight), raw(m.bias)) for _, m in inj.layers]
        assert all(torch.equal(a, b) for pa, pb in zip(before, after) for a, b in zip(pa, pb))
        assert torch.equal(model(x), clean_out)
    # weight codes and a scale of one trial compose: (code ^ mask) decoded at the faulty scale
    lsq = two_layers("lsq")
    step = lsq[0].quan_w_fn.step.detach().clone()
    both = FaultConfig(ber=1.0, target=["weights", "scales"], bits=[31], layers=["0"])  # 31: not an 8-bit code's
    with FaultInjector(lsq, both, seed=0) as inj, pytest.raises(QfiError, match="do not fit 8-bit"):
        inj.exposed_bits()
    both = FaultConfig(ber=1.0, target=["weights", "scales"], bits=[-1], layers=["0"])  # each part's top bit
    with frozen_weights(lsq), FaultInjector(lsq, both, seed=0) as inj:
        w, enc = lsq[0].frozen_weight.clone(), lsq[0].frozen_encoding
        codes = torch.round(w / enc.scale)
        with inj.trial(0):
            flipped = torch.where(codes >= 0, codes - 128, codes + 128)  # the sign bit of a two's-complement code
            assert torch.equal(lsq[0].frozen_weight, (flipped * -enc.scale).to(torch.float32))
    assert torch.equal(lsq[0].quan_w_fn.step.detach(), step)


def test_flips_over_all_selected_bits_are_binomial_and_shared_by_size():
    model = two_layers("affine")
    fault = FaultConfig(ber=0.02, target=["weights", "biases", "scales", "zero_points"])
    trials, p = 400, 0.02
    with FaultInjector(model, fault, seed=5) as inj, frozen_weights(model):
        bits = inj.exposed_bits_by_part()
        assert bits == {"weights": 160 * 8, "scales": 2 * 32, "zero_points": 2 * 8, "biases": 12 * 32}
        totals, shares = [], dict.fromkeys(bits, 0)
        for t in range(trials):
            with inj.trial(t):
                pass
            totals.append(inj.flips_total())
            for part, n in inj.flips_by_part().items():
                shares[part] += n
    n = sum(bits.values())
    mean, sd = sum(totals) / trials, math.sqrt(n * p * (1 - p) / trials)
    assert abs(mean - n * p) <= 5 * sd, (mean, n * p, sd)
    var = sum((v - mean) ** 2 for v in totals) / (trials - 1)
    assert abs(var / (n * p * (1 - p)) - 1) < 0.3  # binomial variance (sd of the ratio ~ 0.07 at 400 trials)
    for part, k in bits.items():  # each part: Bin(trials * k, p)
        expected = trials * k * p
        assert abs(shares[part] - expected) <= 5 * math.sqrt(expected * (1 - p)), (part, shares[part], expected)


def test_rate_patterns_of_biases_are_nested_and_reproducible_and_leave_weight_patterns_alone():
    model = two_layers()
    clean = raw(model[0].bias).clone()

    def faulty_bias(ber: float, seed: int = 2, target=("weights", "biases")) -> tuple[torch.Tensor, torch.Tensor]:
        with FaultInjector(model, FaultConfig(ber=ber, target=list(target)), seed=seed) as inj, frozen_weights(model):
            with inj.trial(4):
                return raw(model[0].bias) ^ clean, model[0].frozen_weight.clone()

    low, w_low = faulty_bias(0.05)
    high, _ = faulty_bias(0.2)
    def n_bits(x: torch.Tensor) -> int:
        return sum(int(((x >> k) & 1).sum()) for k in range(32))

    assert n_bits(low & ~high) == 0 and 0 < n_bits(low) < n_bits(high)  # the lower rate's bits are a subset
    assert torch.equal(faulty_bias(0.05)[0], low) and not torch.equal(faulty_bias(0.05, seed=3)[0], low)
    _, w_only = faulty_bias(0.05, target=("weights",))
    assert torch.equal(w_low, w_only)  # adding bias faults does not change the weight faults


def test_a_count_is_spread_exactly_over_all_selected_bits():
    model = two_layers()
    fault = FaultConfig(model="bitflip_count", ber=None, count=20, target=["weights", "biases", "scales"])
    trials, per_part = 300, {}
    with FaultInjector(model, fault, seed=0) as inj, frozen_weights(model):
        bits = inj.exposed_bits_by_part()
        for t in range(trials):
            with inj.trial(t):
                pass
            assert inj.flips_total() == 20
            for part, n in inj.flips_by_part().items():
                per_part[part] = per_part.get(part, 0) + n
    total = sum(bits.values())
    for part, k in bits.items():
        expected = trials * 20 * k / total
        assert abs(per_part[part] - expected) <= 5 * math.sqrt(expected), (part, per_part[part], expected)


def test_bits_total_is_the_hand_sum_of_the_selected_parts():
    lsq, affine = two_layers("lsq"), two_layers("affine")
    weights, biases = (16 * 8 + 8 * 4) * 8, (8 + 4) * 32

    def exposed(model, **kw):
        with FaultInjector(model, FaultConfig(ber=1e-3, **kw), seed=0) as inj:
            return inj.exposed_bits(), inj.exposed_bits_by_part()

    assert exposed(lsq) == (weights, {"weights": weights})
    assert exposed(lsq, target="both")[0] == weights
    assert exposed(lsq, target=["weights", "biases", "scales"]) == (
        weights + biases + 2 * 32, {"weights": weights, "scales": 64, "biases": biases})
    assert exposed(lsq, target=["scales", "zero_points"], scale_format="fp16") == (
        2 * 16, {"scales": 32, "zero_points": 0})  # lsq stores no zero point
    assert exposed(affine, target=["zero_points", "biases"], bits=[-1]) == (2 + 12, {"zero_points": 2, "biases": 12})
    assert exposed(affine, target="biases", layers=["2"], protect=[{"bits": [31]}]) == (4 * 31, {"biases": 124})


@pytest.mark.parametrize("overrides,message", [
    (["fault.target=[weights,nope]"], "fault target must be one of weights, activations, both, scales"),
    (["fault.target=biases", "fault.persistence=forward"], "is written in place once per trial"),
    (["fault.target=[weights,scales]", "fault.enable_in_training=true"], "fault.enable_in_training=false"),
    (["fault.target=[weights,biases]", "command=sensitivity"], "sensitivity maps stored weight bits"),
    (["fault=replay", "fault.file=x.npz", "fault.target=biases"], "applies to weights only"),
    (["fault=count", "fault.count=3", "fault.target=[biases,activations]"], "leave activations out"),
    (["fault.scale_format=bf16"], "fault.scale_format must be one of fp32, fp16"),
])
def test_unsupported_combinations_are_one_line_errors(overrides, message):
    with pytest.raises(QfiError, match=message):
        RunConfig.from_dict(compose(overrides))
    with pytest.raises(QfiError, match="--save-faults records per-trial weight faults"):
        FaultConfig(target=["weights", "biases"]).validated().check_recordable()


def test_old_targets_keep_their_meaning_and_their_stored_form():
    assert FaultConfig().validated().as_dict()["target"] == "weights"
    both = FaultConfig(target="both").validated()
    assert both.parts == ("weights",) and both.activations and not both.weights_only
    assert FaultConfig(target="activations").validated().parts == ()
    assert FaultConfig.from_dict({"target": ["weights"]}).weights_only


def test_inject_eval_cli_with_biases_and_scales_writes_the_breakdown(trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(checkpoint), "--ber", "0.01", "--trials", "3",
                    "--out", "E", "fault.target=[weights,biases,scales]")
    assert code == 0 and "exposed bits by part" in out, out
    res = json.loads(Path("E/results.json").read_text())
    by_part = res["bits_by_part"]
    assert set(by_part) == {"weights", "scales", "biases"} and res["bits_total"] == sum(by_part.values())
    assert by_part["biases"] > 0 and by_part["scales"] > 0 and res["fault"]["target"] == ["weights", "biases", "scales"]
    assert [sum(v) for v in zip(*res["flips_by_part"].values())] == res["flips"]
    assert res["fault"]["scale_format"] == "fp32"


def test_group_zero_points_each_shift_their_own_group():
    """Group-wise affine codes store one zero point per group (laid out as the scales): flipping bit 0 of every one
    shifts each group's weights by its own scale, the hand-computed (code - (zp ^ 1)) * scale."""
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), quantizer="affine",
                           wbits=8, abits=32, first_last_bits=None, group_size=4).eval()
    fault = FaultConfig(ber=1.0, target="zero_points", bits=[0], layers=["2"])
    with frozen_weights(model), FaultInjector(model, fault, seed=0) as inj:
        layer = model[2]
        enc, clean = layer.frozen_encoding, layer.frozen_weight.clone()
        assert tuple(enc.zero_point.shape) == (4, 2) and enc.group == 4  # 4 rows x 2 groups of 4
        assert inj.exposed_bits_by_part() == {"zero_points": 8}
        scale = enc.scale.reshape(-1).repeat_interleave(4).view(4, 8)
        zp = enc.zero_point.reshape(-1).repeat_interleave(4).view(4, 8)
        codes = torch.round(clean / scale) + zp
        with inj.trial(0):
            faulty = layer.frozen_weight.clone()
        assert inj.flips_by_part() == {"zero_points": 8}
        assert torch.equal(faulty, (codes - (zp ^ 1)) * scale)
        assert torch.equal(layer.frozen_weight, clean)

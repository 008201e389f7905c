"""torch.ao int8 models (eager and FX): faults in their stored int8 weights, restored bit for bit."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.quant import AO_LABEL, frozen_weights, is_torch_ao, quantized_layers, stored_record

tq = pytest.importorskip("torch.ao.quantization")
ENGINES = [e for e in torch.backends.quantized.supported_engines if e != "none"]
pytestmark = [pytest.mark.skipif(not ENGINES, reason="no torch.ao quantized engine on this CPU"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.relu, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.fc(self.relu(self.conv(self.quant(x))).flatten(1)))


def eager_int8(seed: int = 0) -> nn.Module:
    """A small CNN quantized by eager torch.ao (prepare, calibrate, convert)."""
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    model.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare(model, inplace=True)
        model(torch.randn(32, 1, 8, 8))
        return tq.convert(model, inplace=True)


def fx_int8(seed: int = 0) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(seed)
    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)).eval()
    example = (torch.randn(1, 1, 8, 8),)
    prepared = prepare_fx(float_model, tq.get_default_qconfig_mapping(torch.backends.quantized.engine), example)
    prepared(torch.randn(32, 1, 8, 8))
    return convert_fx(prepared)


def codes(model: nn.Module) -> list[torch.Tensor]:
    return [layer.module.weight().int_repr().clone() for _, layer in quantized_layers(model)]


@pytest.mark.parametrize("build", [eager_int8, fx_int8])
def test_msb_flip_matches_hand_computed_int8(build) -> None:
    model = build()
    x = torch.randn(6, 1, 8, 8)
    clean, before = model(x), codes(model)
    name, layer = quantized_layers(model)[0]
    w = layer.module.weight()
    cfg = FaultConfig(model="bitflip_count", ber=None, count=1, bits=[-1], layers=[name])
    with FaultInjector(model, cfg, seed=3) as inj, frozen_weights(model):
        with inj.trial(0):
            assert inj.flips_total() == 1
            faulty_w = layer.module.weight()
            changed = (faulty_w.int_repr() != w.int_repr()).reshape(-1).nonzero().reshape(-1)
            assert changed.numel() == 1
            i = int(changed[0])
            code = int(w.int_repr().reshape(-1)[i])
            flipped = ((code & 0xFF) ^ 0x80)
            flipped = flipped - 256 if flipped >= 128 else flipped  # as int8 (two's complement)
            assert flipped == code - 128 if code >= 0 else flipped == code + 128
            channel = i // (w.numel() // w.shape[0])
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scale, zp = float(w.q_per_channel_scales()[channel]), int(w.q_per_channel_zero_points()[channel])
            else:
                scale, zp = w.q_scale(), w.q_zero_point()
            assert float(faulty_w.dequantize().reshape(-1)[i]) == pytest.approx((flipped - zp) * scale, rel=1e-6)
            faulty = model(x)
    assert not torch.equal(faulty, clean)
    assert all(torch.equal(a, b) for a, b in zip(before, codes(model)))  # bit-identical after the trial
    assert torch.equal(model(x), clean)


def test_flip_count_at_a_rate_is_binomial_over_int8_bits() -> None:
    model, ber = eager_int8(), 0.01
    n_bits = sum(8 * layer.weight.numel() for _, layer in quantized_layers(model))
    mean, sd = n_bits * ber, math.sqrt(n_bits * ber * (1 - ber))
    with FaultInjector(model, FaultConfig(ber=ber), seed=0) as inj, frozen_weights(model):
        assert inj.exposed_weight_bits() == n_bits
        flips = []
        for t in range(20):
            with inj.trial(t):
                flips.append(inj.flips_total())
    assert abs(sum(flips) / len(flips) - mean) < 5 * sd / math.sqrt(len(flips))
    assert all(abs(f - mean) < 5 * sd for f in flips)


def test_nested_and_reproducible_on_int8() -> None:
    model = eager_int8()
    x = torch.randn(4, 1, 8, 8)
    with FaultInjector(model, FaultConfig(ber=0.01), seed=1) as inj, frozen_weights(model):
        with inj.trial(2, ber=0.001):
            low = [c.clone() for c in codes(model)]
        with inj.trial(2, ber=0.01):
            high, out = [c.clone() for c in codes(model)], model(x)
        with inj.trial(2, ber=0.01):
            assert torch.equal(model(x), out)
    clean = codes(model)
    for c, lo, hi in zip(clean, low, high):
        assert not bool(((lo != c) & (hi == c)).any())  # each entry the low rate changed, the high rate changed too


def test_stored_record_and_detection() -> None:
    model = eager_int8()
    assert is_torch_ao(model) and not is_torch_ao(SmallCNN())
    record = stored_record(model, 8)
    assert record["wbits_label"] == AO_LABEL and set(record["widths"].values()) == {8}


def test_per_forward_modes_are_refused() -> None:
    with pytest.raises(QfiError, match="torch.ao"):
        FaultInjector(eager_int8(), FaultConfig(ber=0.01, persistence="forward"))


def digits_int8() -> nn.Module:
    """A ``model._target_`` that returns a torch.ao int8 model for the 8x8 digits (10 classes)."""
    return eager_int8(seed=0)


AO_TARGET = "model._target_=tests.test_torch_ao.digits_int8"


def test_inject_eval_cli_on_a_torch_ao_target(in_tmp) -> None:
    from typer.testing import CliRunner

    from qfi_cli.cli import app

    run = in_tmp / "ao"
    args = ["inject-eval", "--out", str(run), "--ber", "0.01", "--trials", "3", AO_TARGET, "data=digits",
            "eval.limit=64", "device=cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    import json

    res = json.loads((run / "results.json").read_text())
    n_weights = 4 * 1 * 3 * 3 + 10 * 4 * 64  # conv 4x1x3x3, fc 10x256: every stored int8 weight, 8 bits each
    assert res["bits_total"] == 8 * n_weights and res["bits_model"] == 8 * n_weights
    assert res["wbits_label"] == AO_LABEL and res["quantizer"] == "torch.ao" and res["checkpoint"] is None
    assert res["trials"] == 3 and len(res["flips"]) == 3 and res["samples"] == 64


def test_train_refuses_a_torch_ao_model(in_tmp) -> None:
    from typer.testing import CliRunner

    from qfi_cli.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(in_tmp / "t"), AO_TARGET, "data=digits", "device=cpu",
                                      "train.epochs=1"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not trainable" in lines[0], result.output


def test_torchvision_int8_exposes_every_conv_and_linear_weight() -> None:
    """``qfi_cli.models.torch_ao.torchvision_int8``: every Conv2d / Linear of torchvision's ResNet-18 becomes a
    torch.ao module whose int8 weight the injector exposes (20 convs and fc: 8 bits per weight)."""
    import torchvision

    from qfi_cli.models.torch_ao import torchvision_int8

    net = torchvision_int8("resnet18", num_classes=10, in_channels=1, side=8, calib_batches=1)
    ref = torchvision.models.resnet18(num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    weights = [m.weight.numel() for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert is_torch_ao(net) and len(quantized_layers(net)) == len(weights) == 21
    with frozen_weights(net), FaultInjector(net, FaultConfig(ber=1e-3), seed=0) as inj:
        assert inj.exposed_bits() == 8 * sum(weights)
    with pytest.raises(QfiError, match="no classification model"):
        torchvision_int8("no_such_net")

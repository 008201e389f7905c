"""Every weight-bearing layer type of the layer table: its twin equals the float layer, a forced MSB flip changes
exactly the targeted stored code, forward and backward run, and a model of every type takes a fault trial."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.quant import QUANTIZED_TYPES, frozen_weights, quantize_model, quantized_layers
from qfi_cli.quant.convert import float_layers
from tests.test_registries import LAYER_EXAMPLES

NEW_TYPES = [nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding,
             nn.modules.linear.NonDynamicallyQuantizableLinear, nn.MultiheadAttention]


def example(float_type):
    make, make_x, *call = LAYER_EXAMPLES[float_type]
    torch.manual_seed(0)
    return make(), make_x(), (call[0] if call else (lambda layer, x: layer(x)))


def quantized(layer: nn.Module, wbits: int, abits: int) -> nn.Sequential:
    return quantize_model(nn.Sequential(copy.deepcopy(layer)), "minmax", wbits=wbits, abits=abits,
                          first_last_bits=None)


@pytest.mark.parametrize("float_type", NEW_TYPES, ids=lambda t: t.__name__)
def test_twin_matches_float_at_32_and_within_quantization_at_8_bits(float_type):
    layer, x, call = example(float_type)
    assert type(quantized(layer, 32, 32)[0]) is QUANTIZED_TYPES[float_type]
    assert torch.equal(call(quantized(layer, 32, 32)[0], x), call(layer, x))
    torch.testing.assert_close(call(quantized(layer, 8, 32)[0], x), call(layer, x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("float_type", NEW_TYPES, ids=lambda t: t.__name__)
def test_forced_msb_flip_changes_exactly_one_stored_code(float_type):
    layer, x, call = example(float_type)
    model = quantized(layer, 8, 8).eval()
    for name, target in quantized_layers(model):
        cfg = FaultConfig(model="bitflip_count", ber=None, count=1, layers=[name], bits=[-1])
        with FaultInjector(model, cfg, seed=1) as inj, frozen_weights(model):
            clean = target.frozen_encoding.codes(target.frozen_weight).flatten().clone()
            out = call(model[0], x)
            with inj.trial(0):
                faulty = target.frozen_encoding.codes(target.frozen_weight).flatten()
                changed = (faulty != clean).nonzero().flatten().tolist()
                assert len(changed) == 1, name
                i = changed[0]
                assert (int(faulty[i]) - int(clean[i])) % 256 == 128, name  # the 8-bit code's MSB, and only it
                assert not torch.equal(call(model[0], x), out), name
            assert torch.equal(target.frozen_encoding.codes(target.frozen_weight).flatten(), clean)


@pytest.mark.parametrize("float_type", NEW_TYPES, ids=lambda t: t.__name__)
def test_forward_and_backward_reach_every_stored_weight(float_type):
    layer, x, call = example(float_type)
    model = quantize_model(nn.Sequential(copy.deepcopy(layer)), "lsq", wbits=4, abits=8, first_last_bits=None)
    call(model[0], x).float().pow(2).sum().backward()
    for name, m in quantized_layers(model):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name


class Zoo(nn.Module):
    """One of every layer type, on one input."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
        self.c1, self.t1 = nn.Conv1d(8, 4, 3, padding=1), nn.ConvTranspose1d(4, 2, 2, stride=2)
        self.c3, self.t2 = nn.Conv3d(1, 2, 3, padding=1), nn.ConvTranspose2d(2, 1, 3, padding=1)
        self.fc = nn.Linear(20, 3)

    def forward(self, idx):
        h = self.emb(idx)                                           # (B, 5, 8)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        kv = h[..., :4].transpose(0, 1)                             # (5, B, 4)
        h = h + self.cross(h.transpose(0, 1), kv, kv)[0].transpose(0, 1)
        h = self.t1(self.c1(h.transpose(1, 2)))                     # (B, 2, 10)
        v = self.c3(h[:, None, :, :, None].expand(-1, 1, 2, 10, 2).contiguous()).mean(-1)  # (B, 2, 2, 10)
        return self.fc(self.t2(v).flatten(1))


def test_a_model_of_every_type_is_quantized_faulted_and_trained():
    torch.manual_seed(0)
    idx = torch.randint(0, 10, (4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left float
        model = quantize_model(Zoo(), "lsq", wbits=4, abits=8)
    names = [n for n, _ in quantized_layers(model)]
    assert names == ["emb", "attn.proj.in_proj", "attn.out_proj", "cross.proj.q_proj", "cross.proj.k_proj",
                     "cross.proj.v_proj", "cross.out_proj", "c1", "t1", "c3", "t2", "fc"]
    assert float_layers(model) == []
    model(idx).sum().backward()
    model.eval()
    with FaultInjector(model, FaultConfig(ber=0.05), seed=0) as inj, frozen_weights(model):
        clean = model(idx)
        with inj.trial(0):
            faulty = model(idx)
        assert set(inj.flips) == set(names) and not torch.equal(faulty, clean)
        assert torch.equal(model(idx), clean)


def test_an_unknown_parameter_holding_layer_is_listed_and_left_float():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.gain

    class MyLinear(nn.Linear):  # a Linear subclass: its forward may differ, so it is not taken
        pass

    model = nn.Sequential(nn.Linear(4, 4), Scale(), nn.LayerNorm(4), MyLinear(4, 2))
    with pytest.warns(UserWarning, match=r"stay float .*: 1 \(Scale\), 3 \(MyLinear\)$"):
        quantize_model(model)
    assert type(model[1]) is Scale and type(model[3]) is MyLinear and float_layers(model) == ["1 (Scale)", "3 (MyLinear)"]

"""The FaultInjector on real quantized models: exact bit semantics, statistics, the seed's SAM x injection rules."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from qfi_cli.engine.evaluate import inject_eval, load_trained
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.optim import SAM
from qfi_cli.quant import MinMaxQuantizer, QuanLinear, calibrate, frozen_weights, quantize_model, quantized_layers
from qfi_cli.quant.layers import QuantizedLayerMixin
from tests.conftest import tiny_cnn

ALPHA = 1e-6  # false-alarm probability of each statistical check


def linear_with_codes(codes: list[int], bits: int = 8) -> QuanLinear:
    """A QuanLinear whose weight quantizes exactly to ``codes`` (min-max scale 1 when max |code| = 2^(k-1)-1)."""
    w = torch.tensor([codes], dtype=torch.float64)
    layer = QuanLinear.from_float(nn.Linear(len(codes), 1, bias=False).double(), MinMaxQuantizer(),
                                  MinMaxQuantizer(), bits, 32)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer.eval()


def faulty_codes(layer: QuanLinear, cfg: FaultConfig, seed: int = 0, trial: int = 0) -> list[int]:
    """The integer codes of the layer's weight in trial ``trial`` (in-place path: frozen weights)."""
    with FaultInjector(layer, cfg, seed=seed) as inj, frozen_weights(layer):
        with inj.trial(trial):
            return layer.frozen_encoding.codes(layer.frozen_weight).flatten().tolist()


@pytest.mark.parametrize("fault", ["bitflip", "stuck_at_0", "stuck_at_1", "bitflip_count"])
@pytest.mark.parametrize("quantizer,wbits", [("minmax", 4), ("rquant", 8), ("fp16", 16)])
def test_in_place_trial_equals_per_forward_hook_and_is_undone_bit_for_bit(fault, quantizer, wbits):
    """The two ways in (faults written into frozen weights per trial; a copy corrupted at each forward) give the same
    faulty values, and leaving a trial restores the frozen weights bit for bit: every fault mode, on two's-complement,
    unsigned (RQuant) and IEEE half (fp16) codes."""
    torch.manual_seed(0)
    model = quantize_model(tiny_cnn(), wbits=wbits, abits=32, quantizer=quantizer).eval()
    layers = [m for _, m in quantized_layers(model)]
    cfg = FaultConfig(model=fault, ber=None, count=40) if fault == "bitflip_count" else FaultConfig(model=fault, ber=0.05)
    with FaultInjector(model, cfg, seed=3) as inj:
        for t in range(3):
            inj.set_trial(t)
            per_forward = [m.weight_with_faults().detach().clone() for m in layers]
            with frozen_weights(model):
                clean = [m.frozen_weight.clone() for m in layers]
                with inj.trial(t):
                    in_place = [m.frozen_weight.clone() for m in layers]
                    flips = inj.flips_total()
                assert all(same_bits(a, b) for a, b in zip(clean, [m.frozen_weight for m in layers]))
            assert flips > 0
            # equal values, NaN == NaN; not bits: the per-forward path decodes the whole tensor, so the clean
            # quantizer's -0.0 comes back as +0.0 there, while the in-place path leaves unfaulted entries untouched
            for a, b in zip(per_forward, in_place):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality of two tensors (-0.0 is not 0.0; NaN patterns compare, which ``torch.equal`` does not)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8),
                                                                      b.contiguous().view(torch.uint8))


def test_msb_flip_two_complement_cases():
    assert faulty_codes(linear_with_codes([3, -1, 127, 0]), FaultConfig(ber=1.0, bits=[7])) == [-125, 127, -1, -128]
    assert faulty_codes(linear_with_codes([3, -1, 7, -7], bits=4), FaultConfig(ber=1.0, bits=[-1])) == [-5, 7, -1, 1]


def test_stuck_at_semantics():
    layer = linear_with_codes([3, -1, 127, -127])
    assert faulty_codes(layer, FaultConfig(model="stuck_at_1", ber=1.0)) == [-1, -1, -1, -1]
    assert faulty_codes(layer, FaultConfig(model="stuck_at_0", ber=1.0)) == [0, 0, 0, 0]
    assert faulty_codes(layer, FaultConfig(model="stuck_at_0", ber=1.0, bits=[0])) == [2, -2, 126, -128]


def test_attach_detach_leaves_model_bit_identical():
    model = quantize_model(tiny_cnn(), wbits=4, abits=4).eval()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    before_out = model(x)
    before_state = copy.deepcopy(model.state_dict())
    before_dicts = [set(m.__dict__) for m in model.modules()]
    inj = FaultInjector(model, FaultConfig(ber=0.05, target="both"), seed=1)
    assert not torch.equal(model(x), before_out)
    assert list(model.state_dict()) == list(before_state)
    inj.detach()
    assert [set(m.__dict__) for m in model.modules()] == before_dicts
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before_state.values()))
    assert torch.equal(model(x), before_out)
    assert not model._forward_pre_hooks


def test_ste_gradient_is_the_clean_gradient():
    """With a loss linear in the weights, dL/dW does not depend on W: faults must not change the gradient."""
    torch.manual_seed(0)
    layer = QuanLinear.from_float(nn.Linear(16, 4, bias=False).double(), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32)
    x, r = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    layer.train()
    (layer(x) * r).sum().backward()
    clean = layer.weight.grad.clone()
    layer.weight.grad = None
    with FaultInjector(layer, FaultConfig(ber=0.2, enable_in_training=True)) as inj:
        out = layer(x)
        (out * r).sum().backward()
        assert inj.flips_total() > 0
    assert torch.equal(layer.weight.grad, clean)


def test_injection_off_in_training_by_default():
    model = quantize_model(tiny_cnn(), wbits=4, abits=32).train()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    torch.manual_seed(0)
    clean = model(x)
    with FaultInjector(model, FaultConfig(ber=0.5)) as inj:
        torch.manual_seed(0)
        assert torch.equal(model(x), clean) and inj.flips_total() == 0
        model.eval()
        model(x)
        assert inj.flips_total() > 0


def test_flip_counts_are_binomial_over_trials():
    """Total flips over T trials of a model with B exposed bits ~ Binomial(T * B, ber)."""
    model = quantize_model(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10)), wbits=8, abits=32).eval()
    x = torch.randn(2, 256)
    ber, trials = 1e-3, 50
    with FaultInjector(model, FaultConfig(ber=ber)) as inj:
        total = 0
        for t in range(trials):
            inj.set_trial(t)
            model(x)
            total += inj.flips_total()
        n = inj.exposed_weight_bits() * trials
    lo, hi = stats.binom.ppf(ALPHA / 2, n, ber), stats.binom.isf(ALPHA / 2, n, ber)
    assert lo <= total <= hi, (total, n * ber)


def test_patterns_nested_across_rates_and_reproducible():
    layer = linear_with_codes(list(range(-100, 100)))
    base = np.array(faulty_codes(layer, FaultConfig(ber=0.0)))

    def changed(ber, trial=0, seed=0):
        codes = np.array(faulty_codes(layer, FaultConfig(ber=ber), seed=seed, trial=trial))
        return {(i, b) for i in np.nonzero(codes != base)[0] for b in range(8)
                if ((int(codes[i]) ^ int(base[i])) >> b) & 1}

    low, mid, high = changed(0.01), changed(0.05), changed(0.2)
    assert low and low <= mid <= high and low != high
    assert changed(0.05) == mid, "same (seed, trial, ber, layer) must give the same pattern"
    assert changed(0.05, trial=1) != mid and changed(0.05, seed=1) != mid


def test_fixed_count_flips_exactly_count_bits():
    model = quantize_model(tiny_cnn(), wbits=4, abits=32).eval()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    with FaultInjector(model, FaultConfig(model="bitflip_count", ber=None, count=7)) as inj, frozen_weights(model):
        for t in range(5):
            with inj.trial(t):
                model(x)
            assert inj.flips_total() == 7


def test_activation_faults_leave_weights_alone():
    model = quantize_model(tiny_cnn(), wbits=4, abits=4).eval()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    model(x)
    clean = model(x)
    with FaultInjector(model, FaultConfig(ber=0.05, target="activations")) as inj, frozen_weights(model):
        with inj.trial(0):
            assert all(torch.equal(m.frozen_weight, m.quan_w_fn(m.weight, m.wbits))
                       for _, m in quantized_layers(model))
            assert not torch.equal(model(x), clean)
        assert inj.flips_total() == 0 and inj.flips_total(activations=True) > 0


def test_layer_and_bit_restrictions():
    model = quantize_model(tiny_cnn(), wbits=8, abits=32).eval()
    names = [n for n, _ in quantized_layers(model)]
    with FaultInjector(model, FaultConfig(ber=0.5, layers=[names[1]], bits=[-1])) as inj, frozen_weights(model):
        before = {n: m.frozen_weight.clone() for n, m in quantized_layers(model)}
        with inj.trial(0):
            changed = {n for n, m in quantized_layers(model) if not torch.equal(m.frozen_weight, before[n])}
        assert set(inj.flips) == {names[1]} and changed == {names[1]}
        assert inj.exposed_weight_bits() == dict(quantized_layers(model))[names[1]].weight.numel()


# -- end to end on a trained digits model --------------------------------------------------------------------------

def evaluate(checkpoint, cfg, trials, **fault):
    run_cfg = copy.deepcopy(cfg)
    run_cfg["fault"].update(fault)
    run_cfg["eval"]["trials"] = trials
    [res] = inject_eval(run_cfg, checkpoint)
    return res


def test_ber_zero_reproduces_clean_accuracy_exactly(trained_digits):
    checkpoint, cfg = trained_digits
    res = evaluate(checkpoint, cfg, 3, ber=0.0)
    model, data, _ = load_trained(checkpoint, torch.device("cpu"))
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in data.batches("test", 1000)])
    plain = int((logits.argmax(1) == data.y_test).sum()) / len(data.y_test)
    assert res["accuracies"] == [plain] * 3 and res["clean_accuracy"] == plain
    assert res["flips"] == [0, 0, 0] and res["rerr_mean"] == pytest.approx(1 - plain, abs=1e-15)


def test_ber_half_gives_chance_accuracy(trained_digits):
    """At ber=0.5 every code is uniform and independent of the weights, so predictions are independent of the
    labels: accuracy <= max class frequency (~0.10 on digits) plus sampling noise over 450 samples (sd <= 0.015)."""
    checkpoint, cfg = trained_digits
    res = evaluate(checkpoint, cfg, 5, ber=0.5)
    _, data, _ = load_trained(checkpoint, torch.device("cpu"))
    top = float(torch.bincount(data.y_test).max()) / len(data.y_test)
    assert res["accuracy_mean"] <= top + 5 * math.sqrt(0.25 / len(data.y_test) / 5)
    assert res["clean_accuracy"] > 0.8


def test_results_fields_and_once_per_trial_injection(trained_digits, monkeypatch):
    checkpoint, cfg = trained_digits
    calls, quantized = [], []
    original = FaultInjector._fault_entries
    monkeypatch.setattr(FaultInjector, "_fault_entries",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    original_q = QuantizedLayerMixin.quantize_weight_clean
    monkeypatch.setattr(QuantizedLayerMixin, "quantize_weight_clean",
                        lambda self: quantized.append(1) or original_q(self))
    run_cfg = copy.deepcopy(cfg)
    run_cfg["eval"].update(trials=4, batch_size=50)  # 9 batches per trial
    [res] = inject_eval(run_cfg, checkpoint)
    n_layers = len(quantized_layers(load_trained(checkpoint, torch.device("cpu"))[0]))
    assert len(calls) == 4 * n_layers, "faults must be injected once per trial and layer, not per batch"
    assert len(quantized) == n_layers, "weights must be quantized once per evaluation, not per trial"
    for key in ("ber", "trials", "seed", "clean_accuracy", "accuracy_mean", "accuracy_std", "accuracy_ci95",
                "rerr_mean", "accuracies", "flips", "bits_total", "fault", "checkpoint", "seconds", "nan_trials"):
        assert key in res
    assert len(res["accuracies"]) == len(res["flips"]) == 4
    lo, hi = res["accuracy_ci95"]
    assert lo <= res["accuracy_mean"] <= hi


# -- SAM x injection: the seed's rules (the training engine holds one pattern per step; SAM knows no faults) ---------

def sam_with_injection(persistence="forward"):
    model = quantize_model(tiny_cnn(), wbits=4, abits=32, first_last_bits=None)
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    calibrate(model, x)
    model.train()
    inj = FaultInjector(model, FaultConfig(ber=0.05, enable_in_training=True, persistence=persistence))
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.0), rho=0.05)
    return model, inj, sam, (x, y)


def test_sam_with_training_injection_warns():
    from qfi_cli.config import RunConfig
    from qfi_cli.engine.train import _training_injectors

    model = quantize_model(tiny_cnn(), wbits=4, abits=32)
    cfg = RunConfig.from_dict({"fault": {"ber": 0.01, "enable_in_training": True}, "sam": {"rho": 0.05}})
    with pytest.warns(UserWarning, match="fault injection is on during SAM training"):
        faulty, bet = _training_injectors(cfg, model)
    assert faulty is not None and bet is None
    faulty.detach()


@pytest.mark.parametrize("persistence", ["trial", "forward"])
def test_sam_ascent_uses_clean_quantized_weight_and_both_passes_share_faults(persistence):
    model, inj, sam, (x, y) = sam_with_injection(persistence)
    layers = [m for _, m in quantized_layers(model)]
    seen = []

    def loss_fn():
        out = model(x)
        # what this pass computed with, minus SAM's epsilon = the faulty Q(w) of this pass
        used = [(m.quantize_weight() - (sam.epsilon(m) if sam.epsilon(m) is not None else 0)).detach() for m in layers]
        tracked = [sam.kept(m)[0].detach().clone() for m in layers]
        seen.append((used, tracked))
        return F.cross_entropy(out, y)

    for step in range(2):
        with inj.step(step):  # as engine.train does around each SAM step
            sam.step(loss_fn)
    (used1, tracked1), (used2, _), (used3, _), _ = seen
    clean = [m.quan_w_fn(m.weight, m.wbits).detach() for m in layers]
    for t, c, u in zip(tracked1, clean, used1):
        assert torch.equal(t, c), "SAM must track the clean (pre-fault) quantized weight"
    assert any(not torch.equal(u, c) for u, c in zip(used1, clean)), "the forward must see faults"
    for a, b in zip(used1, used2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # same fault pattern in both passes of one step
    assert any(not torch.equal(a, b) for a, b in zip(used1, used3)), "the next step draws a new pattern"


def test_sam_epsilon_comes_from_clean_weight_gradient():
    model, inj, sam, (x, y) = sam_with_injection()
    layers = [m for _, m in quantized_layers(model)]
    model.zero_grad()
    with inj.step(0):
        F.cross_entropy(model(x), y).backward()
    grads = [sam.kept(m)[0].grad for m in layers]
    sam._set_epsilon()
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    for m, g in zip(layers, grads):
        torch.testing.assert_close(sam.epsilon(m), 0.05 * g / norm, rtol=1e-12, atol=0)
    sam.clear()


def test_a_trial_draws_all_layers_weight_bits_from_one_stream_laid_end_to_end():
    """Trial t's faulty weight bits at a rate: one nested sampler over the selected layers' exposed bits laid end to
    end in layer order (key ``<weights>``), split by layer; fault.bits narrows each layer's exposed bits first."""
    from qfi_cli.faults.sources.base import WEIGHTS
    from qfi_cli.faults.sampler import NestedBitSampler, stream_key

    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20), nn.Linear(20, 5)), wbits=8,
                           abits=32, quantizer="minmax").eval()
    layers = quantized_layers(model)
    for cfg, bit_list in ((FaultConfig(ber=0.02), list(range(8))),
                          (FaultConfig(ber=0.1, layers=["0", "2"], bits=[-1, 0]), [0, 7])):
        chosen = [(n, m) for n, m in layers if cfg.layers is None or n in cfg.layers]
        sizes = [m.weight.numel() * len(bit_list) for _, m in chosen]
        with FaultInjector(model, cfg, seed=5) as inj, frozen_weights(model):
            clean = {n: m.frozen_encoding.encode(m.frozen_weight).flatten() for n, m in layers}
            for t in range(3):
                with inj.trial(t):
                    got = {n: (m.frozen_encoding.encode(m.frozen_weight).flatten() ^ clean[n]) for n, m in layers}
                pos = NestedBitSampler(sum(sizes), stream_key(5, t, WEIGHTS, 0)).positions(cfg.ber)
                start = 0
                for (name, _), size in zip(chosen, sizes):
                    mine = pos[(pos >= start) & (pos < start + size)] - start
                    start += size
                    want = torch.zeros_like(got[name])
                    for p in mine.tolist():
                        want[p // len(bit_list)] |= 1 << bit_list[p % len(bit_list)]
                    assert torch.equal(got[name], want), (name, t)
                assert all(not got[n].any() for n, _ in layers if n not in {c for c, _ in chosen})

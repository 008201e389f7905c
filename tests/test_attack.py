"""qfi attack: the progressive bit search (exhaustive check, exact records, determinism, undo), attack.rank_top
(Rakin et al.'s k_top) against a re-implementation of their rule, attack.json and its curve, command=attack in a
sweep and the report's flips-to-target column, AdvBET's adversarial flips."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.engine.attack import attack, baseline_counts
from qfi_cli.engine import attack as attack_engine
from qfi_cli.faults import search as search_module
from qfi_cli.faults.search import BitSearch, adversarial_flips, bit_gains, flipped, rank_entries
from qfi_cli.io import write_json
from qfi_cli.quant import calibrate, frozen_weights, quantize_model, quantized_layers
from qfi_cli.quant.encoding import Encoding
from qfi_cli.report import aggregate
from qfi_cli.report.attack import collect_attacks, flips_estimate
from tests.helpers import compose

runner = CliRunner()


def tiny(quantizer: str, per_channel: bool = False, bits: int = 3) -> nn.Module:
    """Two quantized linear layers (3-bit codes, 48 + 12 entries: 180 single flips), calibrated, in eval mode."""
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), quantizer, wbits=bits,
                           abits=32, per_channel=per_channel, first_last_bits=None)
    calibrate(model, torch.randn(32, 6))
    return model.eval()


def batch(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def flipped_value(code: int, bit: int, m) -> tuple[int, float]:
    """The code and value after flipping ``bit``, from the encoding's facts alone (python integers)."""
    enc = m.frozen_encoding
    k = enc.bits
    pattern = (code & ((1 << k) - 1)) ^ (1 << bit)
    new = pattern - (1 << k) if enc.signed and pattern >= 1 << (k - 1) else pattern
    return new, new - enc.zero_point


@pytest.mark.parametrize("quantizer,per_channel", [("minmax", False), ("minmax", True), ("affine", False),
                                                   ("rquant", False)])
def test_first_flip_is_the_best_single_flip_by_brute_force(quantizer, per_channel):
    """With every bit of every layer a candidate, the first committed flip raises the attack batch's loss the most
    among all single flips (each one's loss computed independently of the search's code path)."""
    model = tiny(quantizer, per_channel)
    x, y = batch()
    layers = quantized_layers(model)
    with frozen_weights(model):
        losses = {}
        for name, m in layers:
            flat = m.frozen_weight.view(-1)
            enc = m.frozen_encoding
            codes = enc.codes(m.frozen_weight).view(-1).tolist()
            scale = None if enc.scale is None else enc.scale.detach().reshape(-1)
            for i, code in enumerate(codes):
                for b in range(enc.bits):
                    new, units = flipped_value(code, b, m)
                    old = flat[i].clone()
                    if scale is None:  # RQuant: no scale; its decoding is checked against the reference elsewhere
                        flat[i] = enc.decode(torch.tensor([new]), dtype=flat.dtype)[0]
                    else:
                        flat[i] = torch.tensor(float(units), dtype=flat.dtype) * scale[
                            0 if scale.numel() == 1 else i // enc.group]
                    with torch.no_grad():
                        losses[(name, i, b)] = float(F.cross_entropy(model(x), y))
                    flat[i] = old
        assert len(losses) == sum(m.weight.numel() * 3 for _, m in layers)
        search = BitSearch(model, x, y, k_top=len(losses))
        assert search.loss() < max(losses.values())
        flip = search.step()
        best = max(losses.values())
        winners = [k for k, v in losses.items() if v == best]
        assert (flip.layer, flip.index, flip.bit) in winners
        assert flip.loss == best  # same weights, same forward: the same float
        search.restore()


# ------------------------------------------------------------------------------------ rank_top (Rakin et al.'s k_top)

def test_bit_gains_rank_top_by_hand():
    """4-bit two's complement, scale 1. rank_top=1 keeps entry 1 (|grad| 4): value -2 = 1110 with a negative
    gradient, so only the bits that lower it raise the loss: bit 2 (-> -6, gain 16) and bit 1 (-> -4, gain 8);
    bit 0 (-> -1) and the MSB (-> 6) would lower the loss and are not candidates, even with k=5."""
    enc = Encoding(bits=4, scale=torch.tensor(1.0))
    values, grads = torch.tensor([3.0, -2.0, 1.0, 5.0]), torch.tensor([0.5, -4.0, 3.0, 0.1])
    listed = lambda r: [t.tolist() for t in r]  # noqa: E731
    assert listed(bit_gains(values, grads, enc, k=5, rank_top=1)) == [[16.0, 8.0], [1, 1], [2, 1]]
    # rank_top=2 adds entry 2 (value 1 = 0001, gradient 3): bit 2 (-> 5, gain 12), bit 1 (-> 3, gain 6)
    assert listed(bit_gains(values, grads, enc, k=4, rank_top=2)) == [[16.0, 12.0, 8.0, 6.0], [1, 2, 1, 2],
                                                                      [2, 2, 1, 1]]
    # null: every entry and bit, negative gains too (entry 1's MSB: -2 -> 6, gain -32 is last of all 16)
    everything = listed(bit_gains(values, grads, enc, k=16))
    assert len(everything[0]) == 16 and [v[-1] for v in everything] == [-32.0, 1, 3]
    # an excluded (already flipped) bit is skipped; rank_top never reaches below the ranked entries
    assert listed(bit_gains(values, grads, enc, k=5, exclude=[(1, 2)], rank_top=1)) == [[8.0], [1], [1]]
    # ties in |grad| go to the lower index; rank_top above the size keeps every entry
    assert rank_entries(torch.tensor([1.0, -2.0, 2.0, 2.0]), enc, 2).tolist() == [1, 2]
    assert rank_entries(torch.tensor([1.0, -2.0]), enc, 9).tolist() == [0, 1]


def hand_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """One 4-bit linear layer whose codes are set by hand (scale 0.1), one sample x = (2, 0.5, 0) of class 0.

    dL/dW = (p - e_0) x^T: the largest |grad| is W[0,0] (index 0, code -7 = 1001, gradient < 0), the next W[1,0]
    (index 3, code 7 = 0111, gradient > 0). Lowering W[0,0] raises the loss: only its bit 0 can (-7 -> -8); W[1,0]
    is at the top of the range: no bit raises it. Over all weights the best first-order flip is W[0,1]'s MSB
    (index 1, code 0 -> -8: 8 steps at a quarter of the top gradient), outside the top 2."""
    model = quantize_model(nn.Sequential(nn.Linear(3, 3, bias=False)), "minmax", wbits=4, abits=32,
                           first_last_bits=None).eval()
    codes = torch.tensor([[-7.0, 0.0, 0.0], [7.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    with torch.no_grad():
        model[0].weight.copy_(codes * 0.1)
    return model, torch.tensor([[2.0, 0.5, 0.0]]), torch.tensor([0])


def test_rank_top_keeps_the_top_gradient_weights_and_their_loss_raising_bits_by_construction():
    model, x, y = hand_model()
    with frozen_weights(model):
        m = model[0]
        assert m.frozen_encoding.codes(m.frozen_weight).view(-1).tolist()[:4] == [-7, 0, 0, 7]
        g = BitSearch(model, x, y, 1).gradients()[0].view(-1)
        assert g.abs().argsort(descending=True)[:2].tolist() == [0, 3] and g[0] < 0 < g[3]
        for rank_top, expected in ((1, [(0, 0)]), (2, [(0, 0)])):
            (_, _, gains, index, bit), = BitSearch(model, x, y, 1, rank_top=rank_top).candidates(3)
            assert list(zip(index.tolist(), bit.tolist())) == expected and gains[0] > 0
        (_, _, _, index, bit), = BitSearch(model, x, y, 1).candidates(3)
        assert (index[0], bit[0]) == (1, 3)  # today's ranking over every weight: W[0,1]'s MSB
        flip = BitSearch(model, x, y, 1, rank_top=1).step()
        assert (flip.layer, flip.index, flip.bit, flip.old_code, flip.new_code) == ("0", 0, 0, -7, -8)
        other = BitSearch(model, x, y, 1)
        flip = other.step()
        assert (flip.index, flip.bit, flip.old_code, flip.new_code) == (1, 3, 0, -8)
        other.restore()


def test_rank_top_runs_on_rquant_codes():
    """RQuant stores one range per tensor and no scale: its weights rank by |dL/dw| (a missing scale broke it)."""
    model = tiny("rquant")
    x, y = batch()
    with frozen_weights(model):
        search = BitSearch(model, x, y, 1, rank_top=3)
        flip = search.step()
        search.restore()
    assert flip.loss > 0


def frozen_grads(model, layers, x, y):
    """dL/dw of every layer's frozen weight on (x, y), the weights leaves for this pass only."""
    weights = [m.frozen_weight for _, m in layers]
    for w in weights:
        w.requires_grad_(True)
    try:
        return torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    finally:
        for w in weights:
            w.requires_grad_(False)


@pytest.mark.parametrize("per_channel", [False, True])
def test_rank_top_candidates_are_the_positive_gain_bits_of_the_top_gradient_weights(per_channel):
    """Each layer's candidates are exactly the loss-raising bits (first order) of its 5 weights of largest
    |dL/d code| = |dL/dw * scale| (with per-channel scales the scale counts)."""
    model = tiny("minmax", per_channel, bits=4)
    x, y = batch()
    with frozen_weights(model):
        layers = quantized_layers(model)
        grads = frozen_grads(model, layers, x, y)
        everyone = BitSearch(model, x, y, 1).candidates(1000)
        for (name, m, gains, index, bit), g, (*_, all_index, _) in zip(
                BitSearch(model, x, y, 1, rank_top=5).candidates(1000), grads, everyone):
            scale = m.frozen_encoding.scale.detach().reshape(-1)
            by_code = [float(v) * float(scale[0] if scale.numel() == 1 else scale[i // m.frozen_encoding.group])
                       for i, v in enumerate(g.view(-1).tolist())]
            top = set(sorted(range(g.numel()), key=lambda i: (-abs(by_code[i]), i))[:5])
            assert set(index.tolist()) <= top and bool((gains > 0).all())
            assert not set(all_index.tolist()) <= top  # without rank_top other weights are candidates too
            codes = m.frozen_encoding.codes(m.frozen_weight).view(-1).tolist()
            raising = {(i, b) for i in top for b in range(4)
                       if float(g.view(-1)[i]) * (flipped_value(codes[i], b, m)[1] - codes[i]) > 0}
            assert set(zip(index.tolist(), bit.tolist())) == raising


def _bit_gains_before_rank_top(values, grads, encoding, k, exclude=(), rank_top=None):
    """bit_gains as it was before attack.rank_top (commit ceb3d6f): the reference for rank_top=null."""
    assert rank_top is None
    values = values.detach().reshape(-1)
    grads = grads.detach().reshape(-1).to(values.dtype)
    n = values.numel()
    index = torch.arange(n, device=values.device)
    patterns = encoding.encode(values, index)
    per_bit = min(k, n)
    excluded = {}
    for i, b in exclude:
        excluded.setdefault(int(b), []).append(int(i))
    top_gains, top_index, top_bit = [], [], []
    for b in range(encoding.bits):
        changed = encoding.decode(patterns ^ (1 << b), index, dtype=values.dtype)
        gain = grads * (changed - values)
        gain = torch.where(torch.isnan(gain), torch.full_like(gain, -math.inf), gain)
        if b in excluded:
            gain[torch.tensor(excluded[b], device=gain.device)] = -math.inf
        g, i = gain.topk(per_bit)
        top_gains.append(g)
        top_index.append(i)
        top_bit.append(torch.full_like(i, b))
    gains, index, bits = torch.cat(top_gains), torch.cat(top_index), torch.cat(top_bit)
    g, i, b = gains.tolist(), index.tolist(), bits.tolist()
    order = [j for j in sorted(range(len(g)), key=lambda j: (-g[j], i[j], b[j]))[:k] if g[j] > -math.inf]
    pick = torch.tensor(order, dtype=torch.long, device=gains.device)
    return gains[pick], index[pick], bits[pick]


@pytest.mark.parametrize("quantizer,per_channel,bits", [("minmax", False, 4), ("minmax", True, 4), ("rquant", False, 3),
                                                        ("fp16", False, 16)])
def test_rank_top_null_is_the_search_of_before_bit_for_bit(quantizer, per_channel, bits, monkeypatch):
    def run(**kw):
        model = tiny(quantizer, per_channel, bits)
        x, y = batch()
        with frozen_weights(model):
            search = BitSearch(model, x, y, 3, **kw)
            candidates = [[t.tolist() for t in c[2:]] for c in search.candidates(10_000)]
            flips = [search.step() for _ in range(10)] + search.first_order_step(4)
            search.restore()
        return candidates, [f.as_dict() for f in flips]

    now, null = run(), run(rank_top=None)
    monkeypatch.setattr(search_module, "bit_gains", _bit_gains_before_rank_top)
    assert now == null == run()


def bfa_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k_top: int, steps: int) -> list[tuple]:
    """Rakin et al.'s progressive bit search (n_bits2flip = 1), written here from a reading of their attack/BFA.py.

    Per iteration: the gradient of the loss w.r.t. every layer's integer codes; per layer the k_top codes of largest
    |grad|; their bit gradients grad * w_b (w_b = 2^b, the MSB's -2^(N-1)); a bit may flip where it is 0 and its
    bit gradient positive or it is 1 and its bit gradient negative; the one of largest |bit gradient| is flipped
    (none when all are 0), the loss evaluated, the flip undone; the layer with the largest loss keeps its flip.
    qfi's departure kept here: a bit flipped once is never chosen again."""
    layers = quantized_layers(model)
    taken: set[tuple[str, int, int]] = set()
    out = []
    for _ in range(steps):
        grads = frozen_grads(model, layers, x, y)
        best = None
        for (name, m), g in zip(layers, grads):
            enc, flat = m.frozen_encoding, m.frozen_weight.view(-1)
            assert enc.signed and enc.zero_point == 0 and not enc.is_float  # two's-complement codes, as theirs
            n_bits, codes = enc.bits, enc.codes(m.frozen_weight).view(-1).tolist()
            scale = enc.scale.detach().reshape(-1).tolist()
            s = [scale[0] if len(scale) == 1 else scale[i // enc.group] for i in range(len(codes))]
            g_code = [float(v) * s[i] for i, v in enumerate(g.view(-1).tolist())]  # dL/dcode = dL/dw * scale
            top = sorted(range(len(codes)), key=lambda i: (-abs(g_code[i]), i))[:k_top]
            choices = []
            for i in top:
                for b in range(n_bits):
                    w_b = -(1 << (n_bits - 1)) if b == n_bits - 1 else 1 << b
                    bit, bit_grad = (codes[i] >> b) & 1, g_code[i] * w_b
                    if (name, i, b) not in taken and bit_grad != 0 and bit != (bit_grad > 0):
                        choices.append((abs(bit_grad), -i, -b))
            if not choices:
                continue
            _, i, b = max(choices)
            i, b = -i, -b
            new_code, units = flipped_value(codes[i], b, m)
            old = flat[i].clone()
            new = torch.tensor(float(units), dtype=flat.dtype) * torch.tensor(s[i], dtype=flat.dtype)
            flat[i] = new
            with torch.no_grad():
                loss = float(F.cross_entropy(model(x), y))
            flat[i] = old
            if best is None or loss > best[0]:
                best = (loss, name, flat, i, b, codes[i], new_code, new)
        loss, name, flat, i, b, old_code, new_code, new = best
        flat[i] = new
        taken.add((name, i, b))
        out.append((name, i, b, old_code, new_code, loss))
    return out


@pytest.mark.parametrize("per_channel,rank_top", [(False, 10), (True, 10), (False, 3)])
def test_rank_top_with_k_top_1_is_rakin_et_al_s_rule(per_channel, rank_top):
    """attack.rank_top=R attack.k_top=1 commits the same flips as the re-implementation of their rule (8-bit codes,
    their k_top R), step after step."""
    x, y = batch()
    reference_model, model = tiny("minmax", per_channel, bits=8), tiny("minmax", per_channel, bits=8)
    with frozen_weights(reference_model):
        expected = bfa_reference(reference_model, x, y, rank_top, steps=8)
    with frozen_weights(model):
        search = BitSearch(model, x, y, 1, rank_top=rank_top)
        got = [search.step() for _ in range(8)]
        search.restore()
    assert [(f.layer, f.index, f.bit, f.old_code, f.new_code) for f in got] == [e[:5] for e in expected]
    assert [f.loss for f in got] == pytest.approx([e[5] for e in expected], rel=1e-6)
    assert len({(f.layer, f.index) for f in got}) > 1


def test_flips_stay_in_range_are_recorded_exactly_and_undone_bit_for_bit():
    model = tiny("minmax", bits=4)
    x, y = batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(x)
    with frozen_weights(model):
        layers = dict(quantized_layers(model))
        clean = {n: m.frozen_weight.clone() for n, m in layers.items()}
        search = BitSearch(model, x, y, k_top=3)
        flips = [search.step() for _ in range(12)]
        seen, current = set(), {n: w.clone().view(-1) for n, w in clean.items()}
        for f in flips:  # replay the records on a copy of the clean weights
            enc = layers[f.layer].frozen_encoding
            low, high = enc.code_range()
            assert low <= f.old_code <= high and low <= f.new_code <= high
            assert (f.old_code ^ f.new_code) & ((1 << enc.bits) - 1) == 1 << f.bit
            assert f.old_value == float(current[f.layer][f.index])
            assert f.old_code == int(enc.codes(torch.tensor([f.old_value]))[0])
            assert f.new_code == flipped_value(f.old_code, f.bit, layers[f.layer])[0]
            assert f.new_value == float(torch.tensor(float(f.new_code)) * enc.scale.detach())  # float32 product
            current[f.layer][f.index] = f.new_value
            assert (f.layer, f.index, f.bit) not in seen  # a bit is flipped at most once
            seen.add((f.layer, f.index, f.bit))
        assert all(torch.equal(current[n], m.frozen_weight.view(-1)) for n, m in layers.items())
        distance = sum(bin(int(a) ^ int(b)).count("1") for n, m in layers.items()
                       for a, b in zip(m.frozen_encoding.encode(clean[n]).view(-1).tolist(),
                                       m.frozen_encoding.encode(m.frozen_weight).view(-1).tolist()))
        assert distance == len(flips), "n committed flips = Hamming distance n from the clean weights"
        assert flips[-1].loss > search.loss() - 1e-6 and flips[-1].loss == search.loss()
        search.restore()
        assert all(torch.equal(clean[n], m.frozen_weight) for n, m in layers.items())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_same_seed_gives_the_same_flips_and_the_model_is_untouched(trained_digits):
    checkpoint, cfg = trained_digits
    cfg = {**cfg, "attack": {**cfg["attack"], "flips": 3, "random_trials": 2, "k_top": 2}}
    before = torch.load(checkpoint, weights_only=True)["state_dict"]
    a, b = attack(cfg, checkpoint), attack(cfg, checkpoint)
    keys = ("layer", "index", "bit", "old_code", "new_code", "loss", "accuracy")
    assert [[f[k] for k in keys] for f in a["flips"]] == [[f[k] for k in keys] for f in b["flips"]]
    assert a["random"]["accuracies"] == b["random"]["accuracies"]
    other = attack({**cfg, "attack": {**cfg["attack"], "seed": 7}}, checkpoint)
    assert other["attack"]["seed"] == 7 and other["attack_samples"] == 128
    after = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert a["clean_accuracy"] > 0.8 and all(0 <= f["accuracy"] <= 1 for f in a["flips"])
    assert a["random"]["counts"] == baseline_counts(a["flips_committed"])


def test_attack_reaches_chance_on_the_digits_model_while_random_flips_do_not(trained_digits):
    """The digits fixture model: the search takes it to <= 11% within attack.flips flips; as many random flips
    leave it near its clean accuracy in most trials (median over 20 trials above 90%: a few random flips touch
    ~1e-4 of the bits, and only the rare trial that hits a top bit of the first layer collapses)."""
    checkpoint, cfg = trained_digits
    res = attack({**cfg, "attack": {**cfg["attack"], "flips": 40, "random_trials": 20}}, checkpoint)
    n = res["flips_to_target"]
    assert n is not None and res["flips"][n - 1]["accuracy"] <= 0.11 == res["target_accuracy"]
    assert all(f["accuracy"] > 0.11 for f in res["flips"][:n - 1])
    random = res["random"]["accuracies"][res["random"]["counts"].index(n)]
    assert len(random) == 20 and sorted(random)[10] > 0.9, random


def test_cli_writes_attack_json_and_curve_and_says_where_the_data_come_from(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "a"
    result = runner.invoke(app, ["attack", "--checkpoint", str(checkpoint), "--flips", "3", "--target-accuracy",
                                 "0.0", "--seed", "2", "--out", str(out), "attack.random_trials=3", "attack.k_top=2",
                                 "device=cpu"])
    assert result.exit_code == 0, result.output
    assert "training split" in result.output and "test split" in result.output
    res = json.loads((out / "attack.json").read_text())
    assert res["status"] == "ok" and res["flips_committed"] == 3 and res["flips_to_target"] is None
    assert res["attack"]["seed"] == 2 and res["target_accuracy"] == 0.0
    assert len(res["random"]["accuracies"]) == 3 and all(len(a) == 3 for a in res["random"]["accuracies"])
    assert (out / "attack_curve.png").stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["attack.k_top=0"], "attack.k_top must be >= 1, got 0"),
    (["attack.rank_top=0"], "attack.rank_top must be >= 1 or null (every weight), got 0"),
    (["--target-accuracy", "1.5"], "attack.target_accuracy must lie in [0, 1]"),
    (["attack.batch=many"], "attack.batch must be a whole number"),
    (["+attack.depth=3"], "unknown setting attack.depth"),
])
def test_bad_attack_setting_is_one_line(in_tmp, args, message):
    result = runner.invoke(app, ["attack", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_sweep_command_attack_writes_points_resumes_and_reports(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    args = ["sweep", "--checkpoint", str(checkpoint), "--out", str(out), "command=attack", "attack.flips=2",
            "attack.random_trials=2", "attack.k_top=2", "attack.seed=0,1", "device=cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*/attack.json"))
    assert [p.parent.name for p in files] == ["attack.seed=0", "attack.seed=1"]
    assert not list(out.rglob("results.json")), "command=attack wins over the sweep's command=inject_eval"
    assert all(json.loads(p.read_text())["point"] == {"attack.seed": i} for i, p in enumerate(files))
    table = (out / "table.md").read_text()
    assert "Flips to ≤11% acc" in table and "Random acc % @ same flips" in table
    rows = list(csv.DictReader(open(out / "attacks.csv")))
    assert [r["attack.seed"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    stamps = [p.stat().st_mtime_ns for p in files]
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skip finished attack" in again.output, again.output
    assert [p.stat().st_mtime_ns for p in files] == stamps
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "flips to target" in report.output, report.output


def test_sweep_over_rank_top_reaches_the_search_and_is_recorded(trained_digits, in_tmp, monkeypatch):
    """attack.rank_top sweeps like any attack key: each point's search gets its value, attack.json records it, the
    curve's legend names it when set."""
    from qfi_cli.report.attack import attack_figure

    seen = []

    class Spy(BitSearch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.k_top, self.rank_top))

    monkeypatch.setattr(attack_engine, "BitSearch", Spy)
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--out", str(out), "command=attack",
                                 "attack.flips=1", "attack.random_trials=1", "attack.k_top=1",
                                 "attack.rank_top=null,10", "device=cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(seen, key=str) == [(1, 10), (1, None)]
    for value in ("null", "10"):
        res = json.loads((out / f"attack.rank_top={value}" / "attack.json").read_text())
        assert res["attack"]["rank_top"] == (None if value == "null" else 10) and res["flips_committed"] == 1
        legend = [t.get_text() for t in attack_figure(res).axes[0].get_legend().get_texts()]
        assert ("rank_top=10" in " ".join(legend)) == (value == "10")


def test_failing_attack_point_is_recorded_and_the_sweep_goes_on(trained_digits, in_tmp):
    """A point whose checkpoint does not match its settings (4-bit asked of an 8-bit model) records status=failed
    in its attack.json; the other point runs; the sweep exits 2 naming the failure."""
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--out", str(out), "command=attack",
                                 "attack.flips=1", "attack.random_trials=2", "attack.k_top=1", "quant.wbits=4,8",
                                 "device=cpu"])
    assert result.exit_code == 2 and "1 of 2 sweep point(s) failed" in result.output, result.output
    failed = json.loads((out / "quant.wbits=4" / "attack.json").read_text())
    assert failed["status"] == "failed" and "quant.wbits=8, not 4" in failed["error"]
    assert failed["point"] == {"quant.wbits": 4}
    assert json.loads((out / "quant.wbits=8" / "attack.json").read_text())["status"] == "ok"


def _attack_file(path, seed, n, recipe="normal", status="ok", flips=20):
    write_json(path / "attack.json", {
        "status": status, "point": {"recipe": recipe, "seed": seed}, "seed": seed, "recipe": recipe,
        "flips_to_target": n, "flips_committed": n if n is not None else flips, "clean_accuracy": 0.97,
        "target_accuracy": 0.11, "attack": {"flips": flips}, "error": "boom" if status != "ok" else None,
        "random_at_target": None if n is None else {"flips": n, "accuracy_mean": 0.96}})


def test_report_flips_to_target_over_seeds_with_censoring_and_failures(tmp_path):
    for seed, n in ((0, 6), (1, 8), (2, 10)):
        _attack_file(tmp_path / f"recipe=normal,seed={seed}", seed, n)
    for seed, n in ((0, 30), (1, None)):
        _attack_file(tmp_path / f"recipe=randbet,seed={seed}", seed, n, recipe="randbet")
    _attack_file(tmp_path / "recipe=sam,seed=0", 0, None, recipe="sam", status="failed")
    rows = aggregate(tmp_path)
    assert sum(r["status"] != "ok" for r in rows) == 1
    assert not (tmp_path / "summary.csv").exists(), "a sweep of attacks only has no BER rows"
    attacks = collect_attacks(tmp_path)
    normal = [r for r in attacks if r["recipe"] == "normal"]
    est = flips_estimate(normal)
    # 3 seeds: the brackets are their range (a spread, not a CI)
    assert (est.mean, est.low, est.high) == (8.0, 6.0, 10.0)
    censored = flips_estimate([r for r in attacks if r["recipe"] == "randbet" and r["status"] == "ok"])
    assert censored.mean == (30 + 21) / 2 and censored.high is None  # 20 flips not enough: counted as 21
    table = (tmp_path / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert "8.0 [" in next(line for line in lines if "normal" in line)
    assert "≥ 25.5" in next(line for line in lines if "randbet" in line)
    body = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [r["recipe"] for r in body] == ["normal", "randbet"]
    assert float(body[0]["flips_to_target"]) == 8.0 and body[1]["flips_to_target_lower_bound"] == "yes"
    # attacks only: the caption and the seed counts are the attacks', not those of (absent) random-error rows
    assert [r["seeds"] for r in body] == ["3", "2"] and "trials" not in body[0]
    assert body[0]["ci"] == "range [min, max] over training seeds (a spread, not a CI)"
    assert table.startswith("# Robustness to worst-case bit flips") and "random fault patterns" not in table
    assert "ΔRErr" not in table and "mean over its 2 to 3 training seeds" in table


def test_report_mixes_random_error_rows_and_attacks(tmp_path):
    for rho in (0.0, 0.05):
        write_json(tmp_path / f"sam.rho={rho}" / "fault.ber=0.01" / "results.json", {
            "status": "ok", "ber": 0.01, "trials": 2, "seed": 0, "fault_seed": 0, "clean_accuracy": 0.95,
            "accuracy_mean": 0.85, "accuracies": [0.8, 0.9], "rerrs": [0.2, 0.1], "rerr_mean": 0.15,
            "point": {"sam.rho": rho, "fault.ber": 0.01}})
        write_json(tmp_path / f"sam.rho={rho}" / "attack.json", {
            "status": "ok", "point": {"sam.rho": rho}, "seed": 0, "flips_to_target": 5 if rho else 4,
            "flips_committed": 5 if rho else 4, "clean_accuracy": 0.95, "target_accuracy": 0.11,
            "attack": {"flips": 10}, "random_at_target": {"flips": 4, "accuracy_mean": 0.95}})
    rows = aggregate(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    body = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [(r["sam.rho"], r["flips_to_target"], r["rerr_pct@0.01"] != "") for r in body] == \
        [("0.0", "4.0", True), ("0.05", "5.0", True)]
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "attacks.csv").exists()


def test_adversarial_flips_leave_the_weights_and_pass_gradients_straight_through():
    model = tiny("minmax", bits=4).train()
    x, y = batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = adversarial_flips(model, x, y, flips=5, steps=2)
    assert sum(bin(int(v)).count("1") for _, mask in masks.values() for v in mask.tolist()) == 5
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    clean = F.cross_entropy(model(x), y)
    with flipped(model, masks):
        attacked = F.cross_entropy(model(x), y)
        w = [m.weight_with_faults() for _, m in quantized_layers(model)]
        assert any(not torch.equal(a, m.quantize_weight_clean()[0]) for a, (_, m) in zip(w, quantized_layers(model)))
    assert float(attacked.detach()) > float(clean.detach())  # the first-order choice raises this batch's loss
    attacked.backward()
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for _, m in quantized_layers(model))
    assert all(m.weight_fault is None for _, m in quantized_layers(model))
    assert torch.equal(F.cross_entropy(model(x), y), clean)


def test_advbet_recipe_trains_with_a_search_per_step_once_started(in_tmp, monkeypatch):
    from qfi_cli.engine import train as training

    calls = []

    def counted(model, x, y, flips, steps):
        calls.append((len(x), flips, steps))
        return adversarial_flips(model, x, y, flips, steps)

    monkeypatch.setattr(training, "adversarial_flips", counted)
    cfg = compose(["recipe=advbet", "train.epochs=2", "train.limit=256", "model.width=4", "device=cpu",
                   "train.bet.start_loss=100"])
    assert cfg["train"]["bet"]["mode"] == "adversarial" and cfg["quant"]["name"] == "rquant"
    metrics = training.train(cfg, in_tmp / "advbet")
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["test_accuracy"] <= 1
    # 4 steps per epoch; the first step's clean loss starts it (start_loss 100), so every later step searches
    assert calls == [(64, 10, 1)] * 7


def test_bet_modes_do_not_mix_with_training_faults():
    from qfi_cli.commands import check
    from qfi_cli.config import RunConfig
    from qfi_cli.errors import QfiError

    cfg = compose(["recipe=advbet", "fault.enable_in_training=true", "fault.ber=0.01", "device=cpu"])
    with pytest.raises(QfiError, match="train.bet.mode=adversarial both inject"):
        check(RunConfig.from_dict(cfg))  # the train command's rule, run in the pre-check

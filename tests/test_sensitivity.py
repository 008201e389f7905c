"""Where faults hurt: sensitivity cells, protection, float storage, replayable and profiled faults.

Statistical checks follow tests/test_sampler.py: each acceptance region comes from the null distribution (exact
binomial quantiles, chi-square critical values) at a false-alarm probability ALPHA per check, so a correct
implementation fails the k checks of a test with probability at most k * ALPHA. The seeds are fixed: a run is
deterministic.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.config import RunConfig
from qfi_cli.engine.evaluate import inject_eval, load_trained
from qfi_cli.engine.sensitivity import sensitivity
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.faults.selection import exact
from qfi_cli.faults.replay import FaultRecorder, read_fault_file
from qfi_cli.io import load_checkpoint, save_checkpoint
from qfi_cli.models import build_model
from qfi_cli.quant import QUANTIZERS, QuanLinear, float_encoding, frozen_weights, quantize_model, quantized_layers
from qfi_cli.quant.quantizers import MinMaxQuantizer
from tests.conftest import tiny_cnn
from tests.helpers import SWEEP_TRAIN, compose

ALPHA = 1e-6
runner = CliRunner()


def patterns(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantized layer's stored bit patterns (frozen weights, flat)."""
    return {n: m.frozen_encoding.encode(m.frozen_weight.reshape(-1)) for n, m in quantized_layers(model)}


def changed_bits(model: nn.Module, config: FaultConfig, trial: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per layer, the XOR of the stored patterns in trial ``trial`` with the clean ones (0 where nothing changed)."""
    with FaultInjector(model, config, seed=seed) as inj, frozen_weights(model):
        clean = patterns(model)
        with inj.trial(trial):
            faulty = patterns(model)
        assert all(torch.equal(a, b) for a, b in zip(clean.values(), patterns(model).values())), "trial not undone"
    return {n: clean[n] ^ faulty[n] for n in clean}


def int8_model() -> nn.Module:
    return quantize_model(tiny_cnn(), wbits=8, abits=32, quantizer="minmax").eval()


# -- cells ---------------------------------------------------------------------------------------------------------

def test_a_cells_faults_fall_only_in_its_layer_and_bit():
    model = int8_model()
    names = [n for n, _ in quantized_layers(model)]
    for name in names:
        for bit in range(8):
            xor = changed_bits(model, FaultConfig(ber=0.5, layers=[exact(name)], bits=[bit]), trial=bit)
            assert int(xor[name].ne(0).sum()) > 0, "a cell at p = 0.5 must change some bits (else this test is void)"
            assert set(torch.unique(xor[name]).tolist()) <= {0, 1 << bit}
            assert all(int(xor[other].abs().sum()) == 0 for other in names if other != name)


def test_exact_pattern_matches_only_that_name():
    import fnmatch

    assert exact("layer1.0.conv1") == "layer1.0.conv1"
    assert fnmatch.fnmatchcase("a*[b]", exact("a*[b]")) and not fnmatch.fnmatchcase("ab", exact("a*[b]"))


# -- protection ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [{"ber": 0.5}, {"model": "stuck_at_0", "ber": 0.5},
                                   {"model": "stuck_at_1", "ber": 0.5}, {"model": "bitflip_count", "ber": None,
                                                                         "count": 100}])
def test_protected_bits_never_change(fault):
    model = int8_model()
    names = [n for n, _ in quantized_layers(model)]
    assert names == ["0", "3", "8"]
    protect = [{"layers": ["3"]}, {"bits": [-1]}, {"layers": ["0"], "bits": [0, 3]}]
    mask = {"0": 0x80 | 0b1001, "3": 0xFF, "8": 0x80}  # what ``protect`` protects in each layer's 8-bit codes
    config = FaultConfig.from_dict({**fault, "protect": protect})
    for trial in range(3):
        xor = changed_bits(model, config, trial)
        for name in names:
            assert int((xor[name] & mask[name]).abs().sum()) == 0, f"a protected bit of layer {name} changed"
        assert int((xor["8"] & ~mask["8"] & 0xFF).ne(0).sum()) > 0, "unprotected bits must still fail"
    with FaultInjector(model, config) as inj:
        sizes = {n: m.weight.numel() for n, m in quantized_layers(model)}
        assert inj.exposed_weight_bits() == sizes["0"] * 5 + sizes["8"] * 7


def test_protection_leaves_the_other_faults_as_they_were():
    """At a rate, a protected run meets exactly the unprotected run's faults minus the protected bits (paired)."""
    model = int8_model()
    for trial in range(3):
        plain = changed_bits(model, FaultConfig(ber=0.2), trial)
        guarded = changed_bits(model, FaultConfig.from_dict({"ber": 0.2, "protect": [{"bits": [-1, 2]}]}), trial)
        for name in plain:
            assert torch.equal(guarded[name], plain[name] & ~0b10000100 & 0xFF)


def test_protect_mistakes_are_one_line():
    model = int8_model()
    with pytest.raises(QfiError, match="match no quantized layer"):
        FaultInjector(model, FaultConfig.from_dict({"protect": [{"layers": ["conv9"]}]}))
    with pytest.raises(QfiError, match="needs layers and/or bits"):
        FaultConfig.from_dict({"protect": [{}]})
    with pytest.raises(QfiError, match="do not fit 8-bit codes"):
        FaultInjector(model, FaultConfig.from_dict({"protect": [{"bits": [9]}]})).exposed_weight_bits()


# -- float storage -------------------------------------------------------------------------------------------------

def float_layer(fmt: str, values: list[float]) -> QuanLinear:
    layer = QuanLinear.from_float(nn.Linear(len(values), 1, bias=False), QUANTIZERS.get(fmt)(), MinMaxQuantizer(),
                                  16, 32)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values]))
    return layer.eval()


def faulty_weight(layer: nn.Module, config: FaultConfig) -> list[float]:
    with FaultInjector(layer, config) as inj, frozen_weights(layer):
        with inj.trial(0):
            return layer.frozen_weight.reshape(-1).tolist()


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_float_flips_through_the_injector_match_hand_computed_ieee_patterns(fmt):
    """1.0, 0.5, -2.0 and 3.0 in fp16 are 0x3C00, 0x3800, 0xC000, 0x4200; in bf16 0x3F80, 0x3F00, 0xC000, 0x4040.
    Bit 15 is the sign. Bit 14, the exponent's top bit: 1.0 (exponent 01..1) becomes all ones: inf; 0.5 (01..10)
    becomes 11..10: 2**15 = 32768 (fp16, bias 15) or 2**127 (bf16, bias 127); -2.0 (10..0) becomes 00..0: -0.0;
    3.0 becomes a subnormal: 0x0200 = 2**9 * 2**-24 = 2**-15 (fp16), 0x0040 = 2**6 * 2**-133 = 2**-127 (bf16)."""
    layer = float_layer(fmt, [1.0, 0.5, -2.0, 3.0])
    sign = faulty_weight(layer, FaultConfig(ber=1.0, bits=[-1]))
    assert sign == [-1.0, -0.5, 2.0, -3.0]
    exponent = faulty_weight(layer, FaultConfig(ber=1.0, bits=[14]))
    huge, tiny = (2.0**15, 2.0**-15) if fmt == "fp16" else (2.0**127, 2.0**-127)
    assert exponent[0] == math.inf and exponent[1] == huge and exponent[3] == tiny
    assert exponent[2] == 0.0 and math.copysign(1.0, exponent[2]) == -1.0
    assert layer.quantize_weight_clean()[1].float_format == fmt and float_encoding(fmt).bits == 16


def test_float_quantizer_rounds_to_the_format_with_a_straight_through_gradient():
    x = torch.tensor([1.0 + 2**-12, 65519.0, 1e-8], requires_grad=True)
    value, enc = QUANTIZERS.get("fp16")().quantize(x, 16)
    assert value.tolist() == [1.0, 65504.0, torch.tensor(1e-8).half().float().item()]
    value.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0] and enc.float_format == "fp16"
    with pytest.raises(QfiError, match="16-bit"):
        QUANTIZERS.get("bf16")().quantize(x, 8)


def test_float_config_rules():
    q = RunConfig.from_dict(compose(["quant=float", "quant.format=bf16"])).quant
    assert (q.name, q.quantizer, q.wbits, q.abits) == ("float", "bf16", 16, 16)
    q = RunConfig.from_dict(compose(["quant=fp16"])).quant
    assert (q.name, q.quantizer, q.wbits) == ("fp16", "fp16", 16)
    q = RunConfig.from_dict(compose(["quant=float", "quant.format=fp32"])).quant
    assert (q.quantizer, q.wbits, q.abits) == ("fp32", 32, 32)
    with pytest.raises(QfiError, match="quant.wbits must be 16 or null"):
        RunConfig.from_dict(compose(["quant=bf16", "quant.wbits=8"]))
    with pytest.raises(QfiError, match="quant.format applies to float storage"):
        RunConfig.from_dict({"quant": {"name": "lsq", "format": "fp16"}})
    with pytest.raises(QfiError, match="quant=float needs quant.format"):
        RunConfig.from_dict({"quant": {"name": "float", "format": "fp8", "wbits": None, "abits": None}})


def test_float_model_counts_inf_and_nan_trials(tmp_path):
    """An fp16 model (calibrated only) whose exponent bits (10..14) are all stuck at 1 holds only inf or NaN
    weights; conv1 pads with zeros and inf * 0 is NaN, so every logit of every sample is NaN: every trial is a
    NaN trial and predicts nothing right."""
    from qfi_cli.engine.train import train

    cfg = compose(["quant=fp16", "train.epochs=0", "model.width=4", "device=cpu"])
    train(cfg, tmp_path)
    cfg["fault"].update(model="stuck_at_1", ber=1.0, bits=[10, 11, 12, 13, 14])
    cfg["eval"]["trials"] = 2
    [res] = inject_eval(cfg, tmp_path / "model.pt")
    assert res["wbits"] == 16 and res["bits_total"] == res["bits_model"] // 16 * 5
    assert res["nan_trials"] == 2 and res["accuracy_mean"] == 0.0
    assert res["nonfinite_predictions"] == 2 * res["samples"]


# -- replay --------------------------------------------------------------------------------------------------------

def evaluate(checkpoint, cfg, **changes):
    run = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        run[section][field] = value
    return inject_eval(run, checkpoint, save_faults=run["eval"].pop("save_faults", None))


def test_replay_reproduces_the_saved_run_exactly(trained_digits, tmp_path):
    checkpoint, cfg = trained_digits
    for name, fault in (("flip", {}), ("stuck", {"model": "stuck_at_1"})):
        file = tmp_path / f"{name}.npz"
        run = copy.deepcopy(cfg)
        run["fault"].update(fault)
        run["eval"].update(trials=3, bers=[1e-3, 2e-2], fault_seed=7)
        saved = inject_eval(run, checkpoint, save_faults=file)
        replay = copy.deepcopy(cfg)
        replay["fault"].update(model="replay", ber=None, file=str(file))
        replay["eval"]["trials"] = 10  # ignored: the file's trials
        replayed = inject_eval(replay, checkpoint)
        assert [r["ber"] for r in replayed] == [1e-3, 2e-2]
        for a, b in zip(saved, replayed):
            assert a["accuracies"] == b["accuracies"] and a["flips"] == b["flips"] and b["trials"] == 3
            assert b["fault_seed"] == 7 and sum(b["flips"]) > 0
        assert read_fault_file(file).trials == 3


def test_replay_meets_two_models_with_the_same_faults(trained_digits, tmp_path):
    """Replaying one model's faults on another model of the same shapes gives what that model meets when drawn
    with the same fault seed (and differs from the first model's accuracies)."""
    checkpoint, cfg = trained_digits
    ckpt = load_checkpoint(checkpoint)
    state = {k: (v * 0.8 if k.endswith("weight") and v.dim() > 1 else v) for k, v in ckpt["state_dict"].items()}
    other = save_checkpoint(tmp_path / "other.pt", state, ckpt["config"])
    run = copy.deepcopy(cfg)
    run["fault"]["ber"] = 0.02
    run["eval"]["trials"] = 3
    [first] = inject_eval(run, checkpoint, save_faults=tmp_path / "f.npz")
    [direct] = inject_eval(run, other)
    replay = copy.deepcopy(cfg)
    replay["fault"].update(model="replay", ber=None, file=str(tmp_path / "f.npz"))
    [replayed] = inject_eval(replay, other)
    assert replayed["accuracies"] == direct["accuracies"] and replayed["flips"] == direct["flips"]


def test_replay_refuses_other_shapes_in_one_line(trained_digits, tmp_path):
    checkpoint, cfg = trained_digits
    run = copy.deepcopy(cfg)
    run["eval"]["trials"] = 1
    inject_eval(run, checkpoint, save_faults=tmp_path / "f.npz")
    config = FaultConfig(model="replay", ber=None, file=str(tmp_path / "f.npz"))
    with pytest.raises(QfiError, match="replay needs the same quantized layers"):
        FaultInjector(int8_model(), config)
    narrow = quantize_model(build_model("digits_cnn", num_classes=10, in_channels=1, width=4), wbits=8)
    with pytest.raises(QfiError, match=r"layer conv1 was 8-bit \[8, 1, 3, 3\].*is 8-bit \[4, 1, 3, 3\]") as e:
        FaultInjector(narrow, config)
    assert "\n" not in str(e.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QfiError, match="not a qfi fault file"):
        read_fault_file(tmp_path / "junk.npz")
    with pytest.raises(QfiError, match="holds no faults at ber 0.5"):
        inject_eval({**run, "fault": {**run["fault"], "model": "replay", "ber": 0.5,
                                      "file": str(tmp_path / "f.npz")}}, checkpoint)


# -- profile -------------------------------------------------------------------------------------------------------

def binom_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    return int(stats.binom.ppf(alpha / 2, n, p)), int(stats.binom.isf(alpha / 2, n, p))


def test_profiled_faults_follow_the_map(tmp_path):
    """Each (rule, bit position) group of a map holds n codes per trial; over T trials its faulty bits are
    Binomial(T n, p). 5 groups + 1 uniformity check, each at false-alarm ALPHA: a correct sampler fails with
    probability <= 6e-6. Bits outside every rule never fail; stuck cells fail in every trial with their value."""
    torch.manual_seed(0)
    layer = QuanLinear.from_float(nn.Linear(256, 64, bias=False), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32)
    layer = layer.eval()
    n = layer.weight.numel()  # 16384 codes
    profile = {"rates": [{"layers": ["*"], "start": 0, "stop": 8192, "bits": [7], "p": 0.02},
                         {"layers": ["*"], "start": 8192, "bits": [0, -2], "p": 0.1, "mode": "stuck1"},
                         {"layers": ["*"], "start": 0, "stop": 4096, "bits": [3, 4], "p": 0.003, "mode": "stuck0"}],
               "stuck": [{"layer": "", "index": 5, "bit": 2, "value": 1},
                         {"layer": "", "index": 9000, "bit": 6, "value": 0}]}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(profile))
    trials = 40
    recorder = FaultRecorder(layer, [(None, None)], trials)
    config = FaultConfig(model="profile", ber=None, file=str(path))
    with frozen_weights(layer), FaultInjector(layer, config, seed=3) as inj:
        inj.recorder = recorder.add
        clean = layer.frozen_encoding.encode(layer.frozen_weight.reshape(-1))
        for t in range(trials):
            recorder.begin(0, t)
            with inj.trial(t):
                faulty = layer.frozen_encoding.encode(layer.frozen_weight.reshape(-1))
                assert (faulty[5] >> 2) & 1 == 1 and (faulty[9000] >> 6) & 1 == 0
                assert int(((faulty ^ clean) & 0b00100000).abs().sum()) == 0, "bit 5 is in no rule"
    rows = recorder.arrays()
    index, bit, mode = rows["index"], rows["bit"], rows["mode"]
    groups = [(0, 8192, 7, 0.02, 0), (8192, n, 0, 0.1, 2), (8192, n, 6, 0.1, 2), (0, 4096, 3, 0.003, 1),
              (0, 4096, 4, 0.003, 1)]
    stuck = ((index == 5) & (bit == 2) & (mode == 2)) | ((index == 9000) & (bit == 6) & (mode == 1))
    assert int(stuck.sum()) == 2 * trials
    covered = np.zeros(index.size, dtype=bool)
    for start, stop, b, p, m in groups:
        sel = (index >= start) & (index < stop) & (bit == b) & ~stuck
        covered |= sel
        assert set(mode[sel].tolist()) <= {m}
        lo, hi = binom_bounds(trials * (stop - start), p, ALPHA)
        assert lo <= int(sel.sum()) <= hi, (start, stop, b, int(sel.sum()), lo, hi)
    assert (covered | stuck).all(), "faults outside the map's rules"
    # positions within the first rule are uniform over its codes: chi-square over 16 equal bins
    first = index[(bit == 7) & (index < 8192)]
    observed = np.bincount(first // 512, minlength=16)
    critical = stats.chi2.isf(ALPHA, 15)
    assert ((observed - observed.mean()) ** 2 / observed.mean()).sum() <= critical


def test_profile_mistakes_are_one_line(tmp_path):
    model = int8_model()
    cases = {"rates": [{"layers": ["0"], "p": 0.1, "stop": 10}, {"layers": ["0"], "p": 0.2, "start": 5,
                                                                  "bits": [1]}]}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(cases))
    with pytest.raises(QfiError, match=r"rates\[0\] and rates\[1\] both cover 0 codes 5..9"):
        FaultInjector(model, FaultConfig(model="profile", ber=None, file=str(path)))
    path.write_text(json.dumps({"stuck": [{"layer": "fc", "index": 0, "bit": 0, "value": 1}]}))
    with pytest.raises(QfiError, match="no quantized layer is named 'fc'"):
        FaultInjector(model, FaultConfig(model="profile", ber=None, file=str(path)))
    path.write_text(json.dumps({"rates": [{"layers": "0", "p": 2}]}))
    with pytest.raises(QfiError, match=r"map.json: .*p in \[0, 1\]"):
        FaultInjector(model, FaultConfig(model="profile", ber=None, file=str(path)))
    with pytest.raises(QfiError, match="set fault.ber=null"):
        FaultConfig(model="profile", ber=0.1, file=str(path)).validated()


# -- the sensitivity engine ----------------------------------------------------------------------------------------

def test_sensitivity_cells_budget_and_files(trained_digits, tmp_path):
    checkpoint, cfg = trained_digits
    run = copy.deepcopy(cfg)
    run["fault"]["ber"] = 0.05
    run["eval"].update(trials=3, limit=150)
    run["sensitivity"] = {"top": 5, "budget": True}
    [res] = sensitivity(run, checkpoint)
    model, _, _ = load_trained(checkpoint, torch.device("cpu"))
    layers = quantized_layers(model)
    assert [(c.layer, c.bit) for c in res.cells] == [(n, b) for n, m in layers for b in reversed(range(m.wbits))]
    # a cell meets exactly the faults of inject-eval restricted to its layer and bit
    cell = next(c for c in res.cells if (c.layer, c.bit) == ("conv2", 7))
    [restricted] = evaluate(checkpoint, run, fault__layers=["conv2"], fault__bits=[7])
    assert cell.stats.accuracies == restricted["accuracies"] and cell.bits_exposed == restricted["bits_total"]
    [whole] = evaluate(checkpoint, run)
    assert res.whole["accuracies"] == whole["accuracies"]
    none = res.budget[0]
    assert none.strategy == "none" and none.stats.accuracies == whole["accuracies"]
    msb = next(p for p in res.budget if p.strategy == "msb")
    [guarded] = evaluate(checkpoint, run, fault__protect=[{"bits": [-1]}])
    assert msb.stats.accuracies == guarded["accuracies"]
    assert msb.bits_protected == whole["bits_total"] - guarded["bits_total"] == whole["bits_total"] // 8
    steps = [p for p in res.budget if p.strategy == "cells"]
    assert len(steps) == len(res.cells) and steps[-1].fraction == 1.0
    assert steps[-1].stats.rerrs == [res.clean_error] * 3, "everything protected: the clean model"
    assert all(a.fraction < b.fraction for a, b in zip(steps, steps[1:]))
    from qfi_cli.report.sensitivity import write_sensitivity

    files = write_sensitivity(tmp_path, res)
    assert [f.name for f in files] == ["sensitivity.csv", "sensitivity.png", "budget.csv", "budget.png"]
    with open(tmp_path / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res.cells) and rows[0]["layer"] == "conv1" and rows[0]["bit"] == "7"
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, len(rows) + 1))
    assert all(f.stat().st_size > 5000 for f in files if f.suffix == ".png")


def test_sensitivity_with_a_count_and_protection(trained_digits):
    checkpoint, cfg = trained_digits
    run = copy.deepcopy(cfg)
    run["fault"].update(model="bitflip_count", ber=None, count=3, layers=["fc"],
                        protect=[{"layers": ["fc"], "bits": [0, 1]}])
    run["eval"].update(trials=2, limit=100)
    [res] = sensitivity(run, checkpoint)
    assert [c.bit for c in res.cells] == list(reversed(range(8)))
    assert [c.stats is None for c in res.cells] == [False] * 6 + [True] * 2
    assert all(f == 3 for c in res.cells if c.stats for f in c.stats.flips)
    run["sensitivity"] = {"budget": True}
    with pytest.raises(QfiError, match="give --ber, not --count"):
        sensitivity(run, checkpoint)


# -- command line --------------------------------------------------------------------------------------------------

def test_cli_sensitivity_and_replay(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "sens"
    result = runner.invoke(app, ["sensitivity", "--checkpoint", str(checkpoint), "--trials", "2", "--top", "3",
                                 "--out", str(out), "eval.limit=100", "device=cpu"])
    assert result.exit_code == 0, result.output
    assert "sensitive" in result.output and f"wrote sensitivity.csv, sensitivity.png in {out}" in result.output
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "ok" and res["ber"] == 0.01 and res["command"] == "sensitivity"
    assert (out / "sensitivity.png").is_file() and not (out / "budget.csv").exists()
    bad = runner.invoke(app, ["sensitivity", "--ber", "1e-2", "--count", "3"])
    assert bad.exit_code == 2 and "not both" in bad.output
    saved = in_tmp / "faults.npz"
    first = runner.invoke(app, ["inject-eval", "--checkpoint", str(checkpoint), "--ber", "0.02", "--trials", "2",
                                "--save-faults", str(saved), "--out", str(in_tmp / "a"), "eval.limit=100"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["inject-eval", "--checkpoint", str(checkpoint), "--out", str(in_tmp / "b"),
                                "fault=replay", f"fault.file={saved}", "eval.limit=100"])
    assert again.exit_code == 0, again.output
    a, b = (json.loads((in_tmp / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["accuracies"] == b["accuracies"] and b["trials"] == 2 and a["faults_file"] == str(saved)


@pytest.mark.slow
def test_sweep_puts_int8_beside_fp16_and_bf16(in_tmp):
    out = in_tmp / "formats"
    result = runner.invoke(app, ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", str(out),
                                 "quant=lsq,fp16,bf16", *SWEEP_TRAIN])
    assert result.exit_code == 0, result.output
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["quant"] for r in rows}) == ["bf16", "fp16", "lsq"] and len(rows) == 6
    assert all(r["status"] == "ok" for r in rows)

"""Training meets fault injection: a fresh pattern per step, RandBET's objective and start, weight clipping, recipes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qfi_cli.config import RunConfig
from qfi_cli.engine.train import TrainingFaults, clip_weights, train
from qfi_cli.faults.bits import positions_to_masks
from qfi_cli.faults.sources.base import TRAIN, WEIGHTS
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.optim import SAM
from qfi_cli.quant import QuanConv2d, calibrate, quantize_model, quantized_layers
from tests.conftest import tiny_cnn
from tests.helpers import compose
from tests.reference import apply_mask

TINY = ["train.epochs=1", "train.limit=256", "model.width=4", "device=cpu", "eval.batch_size=450"]


class WeightRecorder:
    """Records, at every training forward of a QuanConv2d, which weight entries differ from the clean Q(w) by at least
    half a quantization step (a bit error changes a code by >= 1 step). It reads the weight before the layer's
    weight hooks (``_hooked_weight``'s argument), i.e. before SAM's epsilon, so the faults alone count."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[int, ...]] = []
        original = QuanConv2d._hooked_weight
        recorder = self

        def spy(layer, w):
            if layer.training:
                with torch.no_grad():
                    clean = layer.quan_w_fn(layer.weight, layer.wbits)
                    step = (clean - 0).abs()[clean != 0].min() if (clean != 0).any() else torch.tensor(1.0)
                    changed = (w.detach() - clean).abs() > step / 2
                recorder.seen.append(tuple(torch.nonzero(changed.flatten()).flatten().tolist()))
            return original(layer, w)

        monkeypatch.setattr(QuanConv2d, "_hooked_weight", spy)


def test_training_draws_a_fresh_pattern_at_every_step(monkeypatch, tmp_path):
    """With training-time injection (default persistence=trial), every optimizer step must see its own pattern
    (Stutz et al.: a single fixed pattern does not generalise); before the fix every step saw trial 0's pattern."""
    rec = WeightRecorder(monkeypatch)
    cfg = compose([*TINY, "fault.enable_in_training=true", "fault.ber=0.02", "sam.rho=0", "train.batch_size=64"])
    train(cfg, tmp_path)
    conv1 = rec.seen[0::3]  # 3 conv layers per forward, one forward per step (rho 0): conv1's faulty entries
    assert len(conv1) == 4 and all(conv1), "every step must see faults"
    assert len(set(conv1)) == len(conv1), "each step must draw its own pattern"


def test_both_sam_passes_of_a_step_share_its_pattern(monkeypatch, tmp_path):
    rec = WeightRecorder(monkeypatch)
    cfg = compose([*TINY, "fault.enable_in_training=true", "fault.ber=0.02", "sam.rho=0.05", "train.batch_size=64"])
    with pytest.warns(UserWarning, match="during SAM training"):
        train(cfg, tmp_path)
    conv1 = rec.seen[0::3]
    assert len(conv1) == 8  # 4 steps x 2 passes
    assert all(conv1[2 * k] == conv1[2 * k + 1] for k in range(4)), "both passes of a SAM step see one pattern"
    assert len({conv1[2 * k] for k in range(4)}) == 4


def _faulty_by_hand(layers, seed, step, ber):
    """Step ``step``'s faulty Q(w) of every layer, computed from the sampler and the bit semantics directly: one
    stream over all layers' weight bits laid end to end in layer order."""
    clean = [m.quantize_weight_clean() for _, m in layers]
    sizes = [value.numel() * m.wbits for (_, m), (value, _) in zip(layers, clean)]
    pos = NestedBitSampler(sum(sizes), stream_key(seed, step, WEIGHTS + TRAIN, 0)).positions(ber)
    out, start = {}, 0
    for (name, layer), (value, enc), size in zip(layers, clean, sizes):
        flat = value.detach().reshape(-1).clone()
        mine = pos[(pos >= start) & (pos < start + size)] - start
        start += size
        index, mask = positions_to_masks(np.asarray(mine), layer.wbits)
        codes = enc.codes(flat[index], index)
        new = apply_mask(codes, mask, layer.wbits, enc.signed)
        flat[index] = enc.decode(new & ((1 << layer.wbits) - 1), index, dtype=flat.dtype)
        out[name] = flat.view_as(value)
    return out


def test_randbet_step_on_two_weights_by_hand():
    """Stutz et al.'s step on a two-parameter model, computed by hand. Linear(1 -> 2), no bias, 2-bit RQuant weights
    [-1, 2] (codes 1, 3); RandBET at p = 1 flips every bit: codes 2, 0 -> faulty weights [0.5, -1] (code 0 decodes
    to the range's low end). One sample x = 1, label 0, so dCE/dw = softmax(w x) - onehot(0):
    clean  z = [-1, 2]:   p0 = 1 / (1 + e^3) -> g_clean = [p0 - 1, 1 - p0], CE = log(1 + e^3);
    faulty z = [0.5, -1]: q0 = 1 / (1 + e^-1.5) -> g_faulty = [q0 - 1, 1 - q0] = [-0.182, 0.182], clamped to
    [-0.05, 0.05]; the step's gradient is their average (g_clean + clamp(g_faulty)) / 2."""
    import math

    from qfi_cli.quant import QuanLinear, RQuantizer

    layer = QuanLinear.from_float(torch.nn.Linear(1, 2, bias=False), RQuantizer(), RQuantizer(), 2, 32)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0], [2.0]]))
    model = torch.nn.Sequential(layer).train()
    cfg = RunConfig.from_dict({"train": {"bet": {"mode": "random", "ber": 1.0}}, "sam": {"rho": 0.0},
                               "quant": {"name": "rquant"}})
    faults = TrainingFaults(cfg, model)
    faults.on = True
    x, y = torch.tensor([[1.0]]), torch.tensor([0])
    with faults.step(0):
        loss, logits = faults.backward(model, x, y)
    faults.detach()
    p0, q0 = 1 / (1 + math.exp(3)), 1 / (1 + math.exp(-1.5))
    expected = [((p0 - 1) + -0.05) / 2, ((1 - p0) + 0.05) / 2]
    assert layer.weight.grad.reshape(-1).tolist() == pytest.approx(expected, abs=1e-6)
    assert float(loss) == pytest.approx((math.log(1 + math.exp(3)) - math.log(q0)) / 2, abs=1e-6)
    assert logits.tolist() == [[-1.0, 2.0]]
    faults.after_step(logits, y)
    assert faults.on is False  # clean loss 3.05 >= 1.15 * 1.75


def test_randbet_gradient_matches_clean_and_clamped_faulty_gradients_on_a_cnn(batch):
    """The same rule on a CNN (4-bit RQuant, batch norm) with step k's pattern computed here by hand from the
    sampler: every trainable parameter's gradient is (g_clean + weight * clamp(g_faulty, -c, c)) / (1 + weight),
    g_faulty taken at the faulty Q(w) (straight through to the float weights); the faulty forward leaves the
    batch-norm statistics alone."""
    from qfi_cli.optim.sam import frozen_bn_stats

    model = quantize_model(tiny_cnn(), "rquant", wbits=4, abits=32, first_last_bits=None)
    model.train()
    reference = copy.deepcopy(model)
    cfg = RunConfig.from_dict({"seed": 7, "train": {"bet": {"mode": "random", "ber": 0.05, "weight": 0.5,
                                                            "grad_clamp": 0.01}}, "sam": {"rho": 0.0}})
    faults = TrainingFaults(cfg, model)
    faults.on = True
    x, y = batch
    with faults.step(3):
        loss, _ = faults.backward(model, x, y)
    faults.detach()
    after_clean = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    layers = quantized_layers(reference)
    faulty = _faulty_by_hand(layers, seed=7, step=3, ber=0.05)
    params = dict(reference.named_parameters())
    clean_loss = F.cross_entropy(reference(x), y)
    g_clean = dict(zip(params, torch.autograd.grad(clean_loss, list(params.values()), allow_unused=True)))
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in after_clean.items())
    leaves = {n: faulty[n].clone().requires_grad_(True) for n, _ in layers}
    for n, m in layers:
        m.frozen_weight = leaves[n]
    with frozen_bn_stats(reference):
        faulty_loss = F.cross_entropy(reference(x), y)
    others = {k: p for k, p in params.items() if k.rsplit(".", 1)[0] not in leaves or not k.endswith("weight")}
    got = torch.autograd.grad(faulty_loss, [*leaves.values(), *others.values()], allow_unused=True)
    g_faulty = {**{n + ".weight": g for n, g in zip(leaves, got)}, **dict(zip(others, got[len(leaves):]))}
    for n, m in layers:
        m.frozen_weight = None
    assert any(not torch.equal(faulty[n], m.quantize_weight_clean()[0]) for n, m in layers)
    for k, p in model.named_parameters():
        gc, gf = g_clean[k], g_faulty[k]
        expected = ((0 if gc is None else gc) + 0.5 * (0 if gf is None else gf.clamp(-0.01, 0.01))) / 1.5
        torch.testing.assert_close(p.grad, torch.as_tensor(expected, dtype=p.dtype).expand_as(p), rtol=1e-9,
                                   atol=1e-12, msg=k)
    assert float(loss) == pytest.approx((float(clean_loss.detach()) + 0.5 * float(faulty_loss.detach())) / 1.5, rel=1e-9)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in after_clean.items())


STUTZ_SEQUENCE = [  # (clean loss, faulty loss of the step or None when it did not inject) -> next step injects?
    ((2.5, None), False),   # clean >= 1.15 t (t = 1.75: 2.0125)
    ((2.0, None), True),    # clean < 2.0125 and (2.0 + 0) / 2 <= 1.75: a step that did not inject counts 0
    ((1.9, 1.7), False),    # (1.9 + 1.7) / 2 = 1.8 > 1.75: off again (the old rule latched on for good)
    ((1.9, None), True),
    ((1.2, 2.3), True),     # mean exactly 1.75: on (<=)
    ((2.02, 0.1), False),   # clean >= 2.0125
]


def test_randbet_curriculum_is_re_decided_every_step():
    from qfi_cli.engine.train import stutz_curriculum

    got = [stutz_curriculum(clean, faulty or 0.0, 1.75) for (clean, faulty), _ in STUTZ_SEQUENCE]
    assert got == [on for _, on in STUTZ_SEQUENCE]


def test_randbet_injects_on_the_steps_its_curriculum_turns_on(batch):
    """Through TrainingFaults: a faulty forward (2 forwards a step) exactly on the steps the rule turned on, decided
    after each step from its clean loss and its faulty loss (threshold 1.0, so 1.15 t = 1.15)."""
    from qfi_cli.engine.train import stutz_curriculum

    model = quantize_model(tiny_cnn(), wbits=4, abits=32, first_last_bits=None)
    faults = TrainingFaults(RunConfig.from_dict({"train": {"bet": {"mode": "random", "start_loss": 1.0}}}), model)
    x, y = batch
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    uniform = torch.zeros(len(y), 3, dtype=torch.float64)    # clean loss log 3 = 1.0986 < 1.15, (1.0986 + 0) / 2 <= 1
    confident = F.one_hot(y, 3).double() * 50                # clean loss ~ 0
    wrong = -F.one_hot(y, 3).double() * 3                    # clean loss ~ 3.05 > 1.15
    counts, states = [], []
    for k, clean_logits in enumerate([wrong, uniform, confident, wrong, confident]):
        forwards.clear()
        with faults.step(k):
            faults.backward(model, x, y)
        counts.append(len(forwards))
        faults.after_step(clean_logits, y)
        states.append(faults.on)
        assert faults.on == stutz_curriculum(float(F.cross_entropy(clean_logits, y)), faults.last_faulty, 1.0)
    hook.remove()
    faults.detach()
    assert states == [False, True, True, False, True]
    assert counts == [1, 1, 2, 2, 1]


def test_clipping_projects_every_trainable_parameter_before_each_forward(monkeypatch, tmp_path):
    """Stutz et al.'s BoxProjection: before each step's forward every trainable parameter (biases and norm shifts
    too, not the quantizers' step sizes) lies in [-w_max, w_max], norm scales within w_max of 1 (their norms hold
    the scale as 1 + gamma); so does the saved model."""
    from qfi_cli.engine.train import network_parameters

    seen = []
    original = SAM.step

    def spy(self, closure, backward=True):
        seen.append(max(float((p.detach() - centre).abs().max()) for p, centre in network_parameters(self.model)))
        return original(self, closure, backward=backward)

    monkeypatch.setattr(SAM, "step", spy)
    train(compose([*TINY, "train.clip_weights=0.05", "train.lr=0.5"]), tmp_path)
    assert len(seen) == 4 and all(v <= np.float32(0.05) for v in seen), seen
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    model = {k: v for k, v in saved.items() if v.is_floating_point() and "quan_" not in k and "running" not in k}
    norm_scales = {k for k in model if k.endswith("weight") and model[k].dim() == 1}
    assert norm_scales and all((v - (1.0 if k in norm_scales else 0.0)).abs().max() <= np.float32(0.05) + 1e-7
                               for k, v in model.items()), model.keys()


def test_clip_weights_projects_weights_biases_and_norms_but_not_step_sizes():
    model = quantize_model(tiny_cnn(), wbits=4, abits=8)
    calibrate(model, torch.randn(4, 1, 8, 8, dtype=torch.float64))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(100).add_(3)
    steps = {k: v.clone() for k, v in model.named_parameters() if "quan_" in k}
    clip_weights(model, 0.1)
    norm_scales = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(norm_scales) == 2
    for k, p in model.named_parameters():
        if "quan_" in k:
            assert torch.equal(p, steps[k])
        else:
            assert float(p.detach().max()) == pytest.approx(1.1 if k in norm_scales else 0.1)


@pytest.mark.parametrize("recipe", ["normal", "rquant", "clipping", "randbet", "sam", "sam_clipping", "sam_randbet"])
def test_every_recipe_composes_and_trains_one_epoch(recipe, tmp_path):
    cfg = compose([f"recipe={recipe}", *TINY, "train.bet.start_loss=100"])  # RandBET on from the second step
    rc = RunConfig.from_dict(cfg)
    assert rc.recipe == recipe
    metrics = train(cfg, tmp_path)
    assert metrics["epochs"] == 1 and np.isfinite(metrics["train_loss"]) and 0 <= metrics["test_accuracy"] <= 1
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["config"]["recipe"] == recipe
    if rc.train.clip_weights:
        assert all(v.abs().max() <= np.float32(rc.train.clip_weights)
                   for k, v in saved["state_dict"].items() if k.endswith("weight") and v.dim() > 1)


@pytest.mark.slow
def test_the_cifar10_study_runs_end_to_end_on_tiny_cifar_files(in_tmp, capsys):
    """`+experiment=robustness_cifar10`: SimpleNet (group norm) on CIFAR-10 files in the release format, recipes x
    training seeds (a narrowed grid), every rate of the experiment, then the study table and paired differences."""
    import csv

    from tests.helpers import qfi
    from tests.test_data import write_cifar

    write_cifar(in_tmp / "data", "cifar10", np.random.default_rng(0), per_file=4)
    code, out = qfi(capsys, "sweep", "--train", "+experiment=robustness_cifar10", "data.root=data", "--out", "study",
                    "recipe=normal,randbet", "seed=0,1", "quant.wbits=8", "train.epochs=1", "eval.trials=2",
                    "device=cpu")
    assert code == 0, out
    models = sorted((in_tmp / "study" / "models").glob("*/model.pt"))
    assert len(models) == 4
    saved = torch.load(models[0], weights_only=True)["config"]
    assert (saved["model"]["name"], saved["model"]["norm"], saved["data"]["name"]) == ("simplenet", "group", "cifar10")
    rows = list(csv.DictReader(open(in_tmp / "study" / "summary.csv")))
    assert len(rows) == 4 * 5 and all(r["status"] == "ok" for r in rows)
    table = list(csv.DictReader(open(in_tmp / "study" / "table.csv")))
    assert [(r["recipe"], r["seeds"]) for r in table] == [("normal", "2"), ("randbet", "2")]
    assert table[1]["drerr_vs_normal_pp@0.01"] != "" and (in_tmp / "study" / "paired.csv").is_file()

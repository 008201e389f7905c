"""Training meets fault injection: a fresh pattern per step, RandBET's objective and start, weight clipping, recipes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qfi_cli.config import RunConfig
from qfi_cli.engine.train import TrainingFaults, clip_weights, train
from qfi_cli.faults.bits import apply_mask, positions_to_masks
from qfi_cli.faults.injector import TRAIN, WEIGHTS
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.optim import SAM
from qfi_cli.quant import QuanConv2d, calibrate, quantize_model, quantized_layers
from tests.conftest import tiny_cnn
from tests.helpers import compose

TINY = ["train.epochs=1", "train.limit=256", "model.width=4", "device=cpu", "eval.batch_size=450"]


class WeightRecorder:
    """Records, at every forward of a QuanConv2d, which weight entries differ from the clean Q(w) by at least half a
    quantization step (a bit error changes a code by >= 1 step; SAM's epsilon is far smaller). Uses only what every
    qfi version has (``_conv_forward`` and the registered quantizer), so it runs against older code too."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[int, ...]] = []
        original = QuanConv2d._conv_forward
        recorder = self

        def spy(layer, x, w, b):
            if layer.training:
                eps = layer.epsilon if getattr(layer, "epsilon", None) is not None else 0
                with torch.no_grad():
                    q = layer._modules["quan_w_fn"]
                    clean = q(layer.weight, layer.wbits)
                    step = (clean - 0).abs()[clean != 0].min() if (clean != 0).any() else torch.tensor(1.0)
                    changed = ((w.detach() - eps) - clean).abs() > step / 2
                recorder.seen.append(tuple(torch.nonzero(changed.flatten()).flatten().tolist()))
            return original(layer, x, w, b)

        monkeypatch.setattr(QuanConv2d, "_conv_forward", spy)


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
        flat[index] = (new - enc.zero_point).to(flat.dtype) * enc.scale.reshape(())
        out[name] = flat.view_as(value)
    return out


def test_randbet_loss_is_clean_plus_faulty_loss_by_hand(batch):
    """Once started, RandBET's objective is CE at Q(w) plus weight * CE at step k's faulty Q(w), the pattern computed
    here by hand from the sampler; its gradient w.r.t. Q(w) is the sum of the two (straight-through)."""
    model = quantize_model(tiny_cnn(), "minmax", wbits=4, abits=32, first_last_bits=None)
    calibrate(model, batch[0])
    model.train()
    reference = copy.deepcopy(model)
    cfg = RunConfig.from_dict({"seed": 7, "train": {"bet": {"mode": "random", "ber": 0.05, "weight": 0.5}},
                               "sam": {"rho": 0.0}})
    faults = TrainingFaults(cfg, model)
    faults.on = True
    x, y = batch
    for _, m in quantized_layers(model):
        m.keep_quantized = True
    with faults.step(3):
        loss, logits = faults.loss(model, x, y)
    loss.backward()
    faults.detach()

    layers = quantized_layers(reference)
    clean = {n: m.quantize_weight_clean()[0].detach() for n, m in layers}
    faulty = _faulty_by_hand(layers, seed=7, step=3, ber=0.05)
    assert any(not torch.equal(clean[n], faulty[n]) for n, _ in layers)

    def loss_at(weights, grad_of=None):
        """CE with every layer at ``weights``; the gradient w.r.t. layer ``grad_of``'s weight if asked."""
        for n, m in layers:
            m.frozen_weight = weights[n].clone().requires_grad_(n == grad_of)
        try:
            out = F.cross_entropy(reference(x), y)
            if grad_of is None:
                return out.detach()
            return torch.autograd.grad(out, dict(layers)[grad_of].frozen_weight)[0]
        finally:
            for _, m in layers:
                m.frozen_weight = None

    torch.testing.assert_close(loss.detach(), loss_at(clean) + 0.5 * loss_at(faulty), rtol=1e-12, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits.detach(), reference(x), rtol=0, atol=0)
    for (n, m), (_, m_model) in zip(layers, quantized_layers(model)):
        g = sum(w.grad for w in m_model.quantized_weights)
        torch.testing.assert_close(g, loss_at(clean, n) + 0.5 * loss_at(faulty, n), rtol=1e-10, atol=1e-14)


def test_randbet_starts_once_the_clean_loss_is_below_the_threshold(batch):
    """No faulty forward until a step's clean loss falls below start_loss; from the next step on, always."""
    model = quantize_model(tiny_cnn(), wbits=4, abits=32, first_last_bits=None)
    faults = TrainingFaults(RunConfig.from_dict({"train": {"bet": {"mode": "random", "start_loss": 1.0}}}), model)
    x, y = batch
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    uniform = torch.zeros(len(y), 3, dtype=torch.float64)       # clean loss log 3 = 1.10 > 1.0
    confident = F.one_hot(y, 3).double() * 50                   # clean loss ~ 0 < 1.0
    expected_forwards = []
    for k, clean_logits in enumerate([uniform, uniform, confident, uniform, uniform]):
        forwards.clear()
        with faults.step(k):
            faults.loss(model, x, y)
        expected_forwards.append(len(forwards))
        faults.after_step(clean_logits, y)
    hook.remove()
    faults.detach()
    assert expected_forwards == [1, 1, 1, 2, 2]


def test_clipping_holds_after_every_step(monkeypatch, tmp_path):
    seen = []
    original = SAM.step

    def spy(self, closure):
        out = original(self, closure)
        seen.append(None)
        return out

    monkeypatch.setattr(SAM, "step", spy)
    import qfi_cli.engine.train as engine

    real_clip = engine.clip_weights

    def checked_clip(model, w_max):
        real_clip(model, w_max)
        seen[-1] = max(float(m.weight.detach().abs().max()) for _, m in quantized_layers(model))

    monkeypatch.setattr(engine, "clip_weights", checked_clip)
    train(compose([*TINY, "train.clip_weights=0.05", "train.lr=0.5"]), tmp_path)
    assert len(seen) == 4 and all(v is not None and v <= np.float32(0.05) for v in seen), seen


def test_clip_weights_clamps_every_quantized_layer():
    model = quantize_model(tiny_cnn(), wbits=4, abits=32)
    with torch.no_grad():
        for _, m in quantized_layers(model):
            m.weight.mul_(100)
    clip_weights(model, 0.1)
    assert all(float(m.weight.detach().abs().max()) == pytest.approx(0.1) for _, m in quantized_layers(model))


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

"""Group-wise integer weight scales (``quant.group_size``): one scale per group of consecutive entries of each output
row, int4 weight-only style. Expected values are derived by hand from the definitions (symmetric min-max: scale =
max|w| of the group / (2**(k-1) - 1); 4-bit two's complement codes), not read back from the code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qfi_cli.config import QuantConfig, RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.faults.flips import write_masked
from qfi_cli.quant import quantize_model, stored_record
from qfi_cli.quant.quantizers import AffineQuantizer, LSQQuantizer, MinMaxQuantizer, weight_groups
from tests.helpers import compose

# one [2, 8] weight, group_size 4: each group's max|w| is 7 * a power of two, so every scale and code is exact
W = torch.tensor([[3.5, -1.0, 0.5, 2.0, -1.75, 0.25, 1.0, 0.5],
                  [7.0, -7.0, 3.0, 0.0, 0.875, -0.25, 0.125, 0.5]])
SCALES = [[0.5, 0.25], [1.0, 0.125]]  # max|w| / 7 per group, in group order
CODES = [[7, -2, 1, 4, -7, 1, 4, 2], [7, -7, 3, 0, 7, -2, 1, 4]]  # w / its group's scale


def test_minmax_group_scales_and_codes_by_hand():
    value, enc = MinMaxQuantizer(group_size=4).quantize(W, 4)
    assert enc.scale.tolist() == SCALES and enc.group == 4 and enc.signed and enc.bits == 4
    assert enc.codes(value).tolist() == CODES
    assert torch.equal(value, W)  # every entry lies on its group's grid
    assert enc.encode(value).tolist() == [[c & 15 for c in row] for row in CODES]  # two's complement patterns
    assert enc._scale_at(None).shape == W.shape  # expanded to the weight for whole-tensor consumers
    # contract: scale element j (flat order) governs flat entries [j * group, (j + 1) * group)
    full = enc._scale_at(None).reshape(-1)
    for j, s in enumerate(enc.scale.reshape(-1).tolist()):
        assert full[j * enc.group:(j + 1) * enc.group].tolist() == [s] * enc.group


def test_conv_groups_run_over_the_flattened_in_kh_kw_row():
    conv = W.reshape(2, 2, 2, 2)  # [out, in, kh, kw]: a row is in * kh * kw = 8 entries, kernel innermost
    value, enc = MinMaxQuantizer(group_size=4).quantize(conv, 4)
    assert enc.scale.tolist() == SCALES and enc.codes(value).reshape(2, 8).tolist() == CODES
    assert enc._scale_at(None).shape == conv.shape


def test_rows_that_group_size_does_not_divide_use_equal_smaller_groups():
    # the largest group <= group_size that divides the row; a row shorter than group_size is one group
    assert weight_groups((8, 144), 32) == (8, 6, 24) and weight_groups((8, 9), 32) == (8, 1, 9)
    assert weight_groups((4, 128), 32) == (4, 4, 32) and weight_groups((4, 31), 32) == (4, 1, 31)
    assert weight_groups((4, 37), 32) == (4, 37, 1)  # a prime row: one scale per entry
    w = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    grouped = MinMaxQuantizer(group_size=32).quantize(w, 4)
    per_row = MinMaxQuantizer(per_channel=True).quantize(w, 4)  # one group per row is per-channel
    assert torch.equal(grouped.value, per_row.value) and grouped.encoding.group == per_row.encoding.group == 9
    assert grouped.encoding.scale.reshape(-1).tolist() == per_row.encoding.scale.reshape(-1).tolist()


@pytest.mark.parametrize("kind", [MinMaxQuantizer, AffineQuantizer, LSQQuantizer])
def test_encode_decode_at_an_index_equal_the_whole_tensor(kind):
    w = torch.randn(8, 3, 4, 8, generator=torch.Generator().manual_seed(1))  # rows of 96: three groups of 32
    value, enc = kind(group_size=32).quantize(w, 4)
    assert enc.group == 32 and enc.scale.numel() == 24
    whole = enc.encode(value)  # the whole tensor, in its own shape
    decoded = enc.decode(whole)
    # LSQ's value carries its gradient-scaled step (s - s c) + s c: equal to s up to an ulp
    assert torch.allclose(decoded, value.detach(), rtol=1e-6, atol=0)
    whole, decoded = whole.reshape(-1), decoded.reshape(-1)
    index = torch.randperm(w.numel(), generator=torch.Generator().manual_seed(2))[:50]
    flat = value.detach().reshape(-1)
    assert torch.equal(enc.encode(flat[index], index), whole[index])
    assert torch.equal(enc.decode(whole[index], index), decoded[index])
    at = index.numpy()  # the numpy path (a trial's few entries on the CPU) gives the same
    assert np.array_equal(enc.encode(flat.numpy()[at], at), whole.numpy()[at])
    assert np.array_equal(enc.decode(whole.numpy()[at], at, dtype=np.float32), decoded.numpy()[at])


def test_an_msb_flip_moves_one_entry_by_eight_steps_of_its_own_group():
    value, enc = MinMaxQuantizer(group_size=4).quantize(W, 4)
    flat = value.clone().reshape(-1)
    # entry 5 (row 0, group 1, scale 0.25): code 1 = 0b0001, flipping bit 3 gives 0b1001 = -7 in 4-bit two's
    # complement, so the value goes from 0.25 to -1.75 (-8 steps of 0.25)
    written = write_masked(flat, enc, torch.tensor([5]), torch.tensor([8]))
    assert written.patterns.tolist() == [1] and written.new.tolist() == [9]
    expect = W.reshape(-1).clone()
    expect[5] = -1.75
    assert torch.equal(flat, expect)
    # entry 13 (row 1, group 1, scale 0.125): code -2 = 0b1110 -> 0b0110 = 6: -0.25 -> 0.75
    write_masked(flat, enc, torch.tensor([13]), torch.tensor([8]))
    expect[13] = 0.75
    assert torch.equal(flat, expect)


def test_affine_groups_have_their_own_zero_points():
    w = torch.tensor([[-0.5, 1.0, 0.0, 3.0]])
    value, enc = AffineQuantizer(group_size=2).quantize(w, 2)
    # group 0: range [-0.5, 1], scale 1.5 / 3 = 0.5, zero point 1; group 1: range [0, 3], scale 1, zero point 0
    assert enc.scale.tolist() == [[0.5, 1.0]] and enc.zero_point.tolist() == [[1, 0]] and not enc.signed
    assert enc.codes(value).tolist() == [[0, 3, 0, 3]] and torch.equal(value, w)
    flat = value.clone().reshape(-1)
    write_masked(flat, enc, torch.tensor([1, 3]), torch.tensor([2, 2]))  # MSB of codes 3, 3 -> 1, 1
    assert flat.tolist() == [-0.5, (1 - 1) * 0.5, 0.0, (1 - 0) * 1.0]


def test_group_error_is_no_larger_than_per_channel_with_outlier_groups():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 128, generator=g) * 0.05
    w[torch.arange(16), torch.randint(0, 128, (16,), generator=g)] = 2.0  # one outlier per row, in one group
    grouped = MinMaxQuantizer(group_size=32).quantize(w, 4)
    per_row = MinMaxQuantizer(per_channel=True).quantize(w, 4)
    s_group = grouped.encoding.scale  # [16, 4]
    s_row = per_row.encoding.scale.reshape(16, 1)
    assert bool((s_group <= s_row).all())  # a group's max|w| is at most its row's
    err = (grouped.value - w).abs().reshape(16, 4, 32)
    assert bool((err <= s_group.unsqueeze(-1) / 2 * (1 + 1e-6)).all())  # round to nearest, nothing clipped
    assert float(((grouped.value - w) ** 2).sum()) < float(((per_row.value - w) ** 2).sum())


def test_lsq_learns_one_step_per_group_and_keeps_it_in_the_state_dict():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    q = LSQQuantizer(group_size=32)
    value, enc = q.quantize(w, 4)
    assert q.step.shape == (4, 2, 1) and enc.group == 32
    expect = 2 * w.detach().abs().reshape(4, 2, 32).mean(-1, keepdim=True) / 7 ** 0.5  # LSQ's init per group
    assert torch.allclose(q.step.detach(), expect)
    value.sum().backward()
    assert q.step.grad is not None and q.step.grad.shape == (4, 2, 1)
    fresh = LSQQuantizer(group_size=32)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.quantize(w, 4).value, value)


def test_config_accepts_group_size_for_the_quantizers_that_take_it():
    assert QuantConfig(name="minmax", wbits=4, group_size=32).validated().group_size == 32
    assert QuantConfig(name="affine", group_size=64).validated().group_size == 64
    assert QuantConfig(name="lsq", group_size=128).validated().group_size == 128
    for name in ("rquant", "fp16"):
        widths = {"wbits": None, "abits": None} if name == "fp16" else {}
        with pytest.raises(QfiError, match=rf"quant={name} takes no quant.group_size \(affine, lsq, minmax do\)"):
            QuantConfig(name=name, group_size=32, **widths).validated()
    with pytest.raises(QfiError, match="quant.group_size must be a whole number >= 1"):
        QuantConfig(name="minmax", group_size=0).validated()
    with pytest.raises(QfiError, match="quant.group_size must be a whole number"):
        RunConfig.from_dict({"quant": {"name": "minmax", "group_size": 2.5}})
    cfg = RunConfig.from_dict(compose(["quant=int4_group"]))
    assert (cfg.quant.name, cfg.quant.wbits, cfg.quant.group_size) == ("minmax", 4, 32)


def test_stored_record_names_each_layer_s_group_and_counts_codes_only():
    from torch import nn

    model = quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10)), "minmax", wbits=4,
                           group_size=32, first_last_bits=None)
    record = stored_record(model, 4)
    assert record["groups"] == {"0": 9, "2": 24}  # a row of 9 is one group; 144 = 6 * 24
    assert record["bits_all_wbits"] == (36 + 1440) * 4  # codes only, as without groups
    assert "groups" not in stored_record(quantize_model(nn.Sequential(nn.Linear(4, 2))), 8)


def test_cli_train_then_inject_eval_keeps_the_clean_accuracy(in_tmp, capsys):
    from tests.helpers import qfi

    run = in_tmp / "run"
    common = ["quant=minmax", "quant.group_size=32", "quant.wbits=4", "model.width=4", "device=cpu"]
    code, out = qfi(capsys, "train", "--out", str(run), "train.epochs=1", "train.limit=256", *common)
    assert code == 0, out
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["config"]["quant"]["group_size"] == 32
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["groups"] == {"conv1": 9, "conv2": 18, "conv3": 24, "fc": 16}  # rows 9, 36, 72, 16
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(run / "model.pt"), "--out", str(in_tmp / "ev"),
                    "--trials", "2", "fault.ber=0.01", "device=cpu")
    assert code == 0, out
    results = json.loads((in_tmp / "ev" / "results.json").read_text())
    assert results["clean_accuracy"] == trained["test_accuracy"]
    assert results["groups"] == trained["groups"]
    assert results["bits_model"] == results["bits_all_wbits"] + (36 + 160) * 4  # first, last layer: 8-bit codes


@pytest.mark.parametrize("kind,signed", [(MinMaxQuantizer, True), (AffineQuantizer, False)])
def test_random_flips_follow_each_entry_s_own_group(kind, signed):
    """Any bit of any entry: the new value is (code' - zero point of its group) * scale of its group, where code'
    is the pattern with that bit flipped read as k-bit two's complement (signed) or as itself (unsigned)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 40, generator=g)  # rows of 40: groups of 20 at group_size 32
    value, enc = kind(group_size=32).quantize(w, 4)
    assert enc.group == 20 and enc.scale.shape == (6, 2)
    index = torch.randperm(w.numel(), generator=g)[:60]
    bit = torch.randint(0, 4, (60,), generator=g)
    flat = value.clone().reshape(-1)
    patterns = enc.encode(value).reshape(-1)[index]
    written = write_masked(flat, enc, index, 1 << bit)
    new = patterns ^ (1 << bit)
    code = torch.where(new >= 8, new - 16, new) if signed else new
    zero = enc.zero_point.reshape(-1)[index // 20] if isinstance(enc.zero_point, torch.Tensor) else 0
    expect = (code - zero).float() * enc.scale.reshape(-1)[index // 20]
    assert torch.equal(written.new, new) and torch.equal(flat[index], expect)
    untouched = torch.ones(w.numel(), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(flat[untouched], value.reshape(-1)[untouched])

"""The bit primitive ``write_masked`` (and its numpy twin) on every kind of Encoding the quantizers return.

For signed two's-complement codes (lsq, minmax; per-tensor and per-channel scales), unsigned affine codes with a
zero point and RQuant codes at 2..8 bits, and for fp16 / bf16 / fp32 floats:

(a) the written entries hold old pattern XOR mask (stuck0: AND NOT, stuck1: OR), read back through the encoding.
    Where that differs it is because the encoding stores two patterns as one value: RQuant's code 0 decodes like
    code 1 (to the range's low end; a constant tensor decodes every code to the constant), and a NaN pattern of
    fp16 / bf16 is held as a NaN of the float32 tensor, which reads back as one canonical NaN pattern;
(b) ``flat[index] = old`` restores the tensor bit for bit;
(c) on a CPU float32 tensor of integer codes, the numpy path and the torch path give bit-identical results.
"""

from __future__ import annotations

from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfi_cli.faults import flips
from qfi_cli.faults.flips import write_masked
from qfi_cli.quant import QUANTIZERS
from qfi_cli.quant.encoding import FLOAT_FORMATS, RQuantEncoding

MODES = ("flip", "stuck0", "stuck1")
# (quantizer, per_channel, bit widths it stores as codes)
KINDS = [("lsq", False, range(2, 9)), ("lsq", True, range(2, 9)), ("minmax", False, range(2, 9)),
         ("minmax", True, range(2, 9)), ("affine", False, range(2, 9)), ("rquant", False, range(2, 9)),
         ("fp16", False, [16]), ("bf16", False, [16]), ("fp32", False, [32])]


def _apply(patterns: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    return {"flip": patterns ^ mask, "stuck0": patterns & ~mask, "stuck1": patterns | mask}[mode]


def _is_nan_pattern(patterns: torch.Tensor, fmt: str) -> torch.Tensor:
    """Which patterns of float format ``fmt`` are NaNs: exponent all ones, mantissa not zero."""
    exponent = {"fp16": 5, "bf16": 8, "fp32": 8}[fmt]
    mantissa = FLOAT_FORMATS[fmt][2] - 1 - exponent
    exp_bits = (patterns >> mantissa) & ((1 << exponent) - 1)
    return (exp_bits == (1 << exponent) - 1) & ((patterns & ((1 << mantissa) - 1)) != 0)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 tensor's own bits (NaNs compare as bits, not as values)."""
    return t.view(torch.int32)


@st.composite
def cases(draw):
    name, per_channel, widths = draw(st.sampled_from(KINDS))
    bits = draw(st.sampled_from(list(widths)))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(rows, cols, generator=g) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    if name == "rquant" and draw(st.booleans()) and rows * cols > 1:
        x = torch.full_like(x, float(x[0, 0]))  # a constant tensor: one value, every code decodes to it
    value, enc = QUANTIZERS.get(name)(per_channel=per_channel).quantize(x, bits)
    flat = value.detach().clone().reshape(-1)
    index = sorted(draw(st.sets(st.integers(0, flat.numel() - 1), min_size=1, max_size=flat.numel())))
    width = enc.bits
    steps = draw(st.lists(st.tuples(st.sampled_from(MODES),
                                    st.lists(st.integers(0, 2**width - 1), min_size=len(index), max_size=len(index))),
                          min_size=1, max_size=2))
    return name, flat, enc, torch.tensor(index), [(mode, torch.tensor(m)) for mode, m in steps]


def _write(flat: torch.Tensor, enc, index: torch.Tensor, steps) -> flips.Written:
    if len(steps) == 1:  # one mask: the tensor form with mode=
        return write_masked(flat, enc, index, steps[0][1], mode=steps[0][0])
    return write_masked(flat, enc, index, steps)


def check_write(name, flat, enc, index, steps, torch_path: bool = False) -> tuple[torch.Tensor, flips.Written]:
    """Write through ``write_masked`` (numpy where it would take it, or forced onto torch) and check (a) and (b)."""
    before = flat.clone()
    clean = enc.encode(flat[index], index)
    with mock.patch.object(flips, "numpy_writable", lambda *_: False) if torch_path else mock.MagicMock():
        w = _write(flat, enc, index, steps)
    expected = clean
    for mode, mask in steps:
        expected = _apply(expected, mask, mode)
    assert torch.equal(w.index.cpu(), index) and torch.equal(_bits(w.old), _bits(before[index]))
    assert torch.equal(w.patterns, clean) and torch.equal(w.new, expected)
    # (a) the tensor holds the decoded new patterns, the other entries unchanged ...
    after = flat.clone()
    assert torch.equal(_bits(after[index]), _bits(enc.decode(expected, index, dtype=flat.dtype)))
    untouched = torch.ones(flat.numel(), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(_bits(after[untouched]), _bits(before[untouched]))
    # ... and reads back as them, where the encoding keeps patterns apart
    read = enc.encode(after[index], index)
    if isinstance(enc, RQuantEncoding):
        if float(enc.span) == 0:
            assert (read == 0).all()  # a constant tensor: every code decodes to the constant, stored as code 0
        else:
            assert torch.equal(read, torch.where(expected == 0, torch.ones_like(expected), expected))
    elif enc.is_float and enc.float_format != "fp32":
        nan = _is_nan_pattern(expected, enc.float_format)
        assert torch.equal(read[~nan], expected[~nan])
        assert _is_nan_pattern(read[nan], enc.float_format).all()
    else:
        assert torch.equal(read, expected)
    # (b) restoring the old values undoes the write bit for bit
    flat[w.index] = w.old
    assert torch.equal(_bits(flat), _bits(before))
    return after, w


@settings(max_examples=400, deadline=None)
@given(cases())
def test_write_masked_changes_exactly_the_masked_bits_and_undoes(case):
    check_write(*case)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_numpy_and_torch_paths_are_bit_identical(case):
    name, flat, enc, index, steps = case
    if enc.is_float:  # float encodings take the torch path only
        assert not flips.numpy_writable(flat, enc)
        return
    assert flips.numpy_writable(flat, enc) and flat.dtype == torch.float32
    by_numpy, w_np = check_write(name, flat.clone(), enc, index, steps)
    by_torch, w_t = check_write(name, flat.clone(), enc, index, steps, torch_path=True)
    assert torch.equal(_bits(by_numpy), _bits(by_torch))
    assert torch.equal(_bits(w_np.old), _bits(w_t.old))
    assert torch.equal(w_np.patterns, w_t.patterns) and torch.equal(w_np.new, w_t.new)


def test_every_quantizer_kind_is_covered():
    """A quantizer added to the registry must get a row in KINDS (so its encoding is property-tested)."""
    assert {name for name, _, _ in KINDS} == set(QUANTIZERS.names())

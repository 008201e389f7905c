"""Property tests of the bit primitive across every Encoding: ``write_masked`` (torch) and ``write_masked_np``.

For random stored codes, random masks and any sequence of fault modes (flip, stuck0, stuck1), the entries written
are the decoded values of the masked codes, computed here from the bit semantics alone (Python integers and one
IEEE operation per entry, not src's ``mask_patterns`` / ``decode``), and the torch path and its numpy twin agree bit
for bit. Encodings: two's complement codes (per tensor and per channel), unsigned affine codes (zero point),
RQuant's unsigned codes, and IEEE fp16 / bf16 / fp32 bits (torch only: the numpy twin takes integer codes).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfi_cli.faults import flips
from qfi_cli.faults.bits import FAULT_MODES
from qfi_cli.faults.flips import numpy_writable, write_masked, write_masked_np
from qfi_cli.quant.encoding import FLOAT_FORMATS, Encoding, RQuantEncoding, float_encoding

MODES = sorted(FAULT_MODES)
OPS = {"flip": lambda c, m: c ^ m, "stuck0": lambda c, m: c & ~m, "stuck1": lambda c, m: c | m}


def scales(n: int):
    """Positive float32 scales of the kind quantizers make (mantissa and exponent both random)."""
    return st.lists(st.floats(2.0**-12, 4.0, width=32), min_size=n, max_size=n)


@st.composite
def integer_encodings(draw):
    """Two's complement or unsigned (affine, zero point) codes; one scale or one per channel."""
    bits = draw(st.integers(2, 8))
    channels = draw(st.sampled_from([1, 1, 2, 3]))
    group = draw(st.integers(1, 6))
    n = channels * group
    signed = draw(st.booleans())
    zero_point = 0 if signed else draw(st.integers(0, 2**bits - 1))
    scale = torch.tensor(draw(scales(channels)), dtype=torch.float32)
    enc = Encoding(bits=bits, scale=scale.reshape(()) if channels == 1 else scale, zero_point=zero_point,
                   signed=signed, group=0 if channels == 1 else group)
    codes = draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n))
    return enc, codes


@st.composite
def rquant_encodings(draw):
    """Stutz et al.'s RQuant storage of a range [lo, hi] (float32); stored codes are 1 .. 2**m - 1."""
    bits = draw(st.integers(2, 8))
    lo = draw(st.floats(-4.0, -2.0**-8, width=32))
    hi = draw(st.floats(2.0**-8, 4.0, width=32))
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    enc = RQuantEncoding(bits=bits, lo=lo_t, hi=hi_t, span=(hi_t.double() - lo_t.double()).float())
    n = draw(st.integers(1, 12))
    return enc, draw(st.lists(st.integers(1, 2**bits - 1), min_size=n, max_size=n))


def _is_nan_pattern(fmt: str, pattern: int) -> bool:
    exponent_bits = {"fp32": 8, "fp16": 5, "bf16": 8}[fmt]
    mantissa_bits = FLOAT_FORMATS[fmt][2] - 1 - exponent_bits
    exponent = (pattern >> mantissa_bits) & ((1 << exponent_bits) - 1)
    return exponent == (1 << exponent_bits) - 1 and pattern & ((1 << mantissa_bits) - 1) != 0


@st.composite
def float_encodings(draw):
    """IEEE storage; stored patterns are any non-NaN pattern (a NaN is not a value a quantizer stores)."""
    fmt = draw(st.sampled_from(sorted(FLOAT_FORMATS)))
    width = FLOAT_FORMATS[fmt][2]
    n = draw(st.integers(1, 12))
    pattern = st.integers(0, 2**width - 1).filter(lambda p: not _is_nan_pattern(fmt, p))
    return float_encoding(fmt), draw(st.lists(pattern, min_size=n, max_size=n))


def expected_value(enc: Encoding, position: int, pattern: int) -> np.float32:
    """The value of ``pattern`` stored at flat ``position``, from the bit semantics alone (float32)."""
    if enc.is_float:
        width = FLOAT_FORMATS[enc.float_format][2]
        if enc.float_format == "fp16":
            return np.array([pattern], dtype=np.uint16).view(np.float16).astype(np.float32)[0]
        shifted = pattern << (32 - width)  # bf16 is the top half of an fp32
        return np.array([shifted], dtype=np.uint32).view(np.float32)[0]
    if isinstance(enc, RQuantEncoding):
        top, half = 2**enc.bits - 1, 2 ** (enc.bits - 1)
        lo, hi, span = (np.float32(t.item()) for t in (enc.lo, enc.hi, enc.span))
        d = np.clip((np.float32(pattern) - np.float32(half)) * np.float32(enc.delta), np.float32(-1), np.float32(1))
        return np.clip((d + np.float32(1)) / np.float32(2) * span + lo, lo, hi)
    code = pattern - (1 << enc.bits) if enc.signed and pattern >= 1 << (enc.bits - 1) else pattern
    scale = enc.scale.reshape(-1)[0 if enc.scale.numel() == 1 else position // enc.group]
    return np.float32(code - enc.zero_point) * np.float32(scale.item())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (NaNs: NaN on both sides, whatever their payload)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


def stored(enc: Encoding, codes: list[int]) -> torch.Tensor:
    """A float32 tensor holding the decoded values of ``codes`` (what a quantizer leaves in a layer)."""
    at = torch.arange(len(codes))
    return enc.decode(torch.tensor(codes, dtype=torch.int64), at, dtype=torch.float32).contiguous()


def steps_and_index(data, enc: Encoding, n: int):
    index = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    k = len(index)
    masks = st.lists(st.integers(0, 2**enc.bits - 1), min_size=k, max_size=k)
    steps = data.draw(st.lists(st.tuples(st.sampled_from(MODES), masks), min_size=1, max_size=3))
    return index, steps


def check(enc: Encoding, codes: list[int], index: list[int], steps) -> None:
    flat = stored(enc, codes)
    assert enc.encode(flat, torch.arange(len(codes))).tolist() == codes, "stored codes read back as themselves"
    before = flat.clone()
    want_patterns = [codes[i] for i in index]
    want_new = list(want_patterns)
    for mode, mask in steps:
        want_new = [OPS[mode](c, m) & ((1 << enc.bits) - 1) for c, m in zip(want_new, mask)]
    want_values = np.array([expected_value(enc, i, p) for i, p in zip(index, want_new)], dtype=np.float32)

    # the torch path (forced where the numpy twin would take over)
    torch_flat = flat.clone()
    with mock.patch.object(flips, "numpy_writable", return_value=False):
        w = write_masked(torch_flat, enc, torch.tensor(index),
                         [(mode, torch.tensor(mask, dtype=torch.int64)) for mode, mask in steps])
    assert w.patterns.tolist() == want_patterns and w.new.tolist() == want_new
    assert same_bits(torch_flat[index].numpy(), want_values)
    untouched = np.setdiff1d(np.arange(len(codes)), index)
    assert same_bits(torch_flat[untouched].numpy(), before[untouched].numpy())
    assert same_bits(w.old.numpy(), before[index].numpy())
    torch_flat[w.index] = w.old
    assert same_bits(torch_flat.numpy(), before.numpy()), "flat[index] = old undoes the write bit for bit"

    if not numpy_writable(flat, enc):
        return
    # the numpy twin, on the same entries: bit for bit the torch path's result
    np_flat = flat.clone()
    old, patterns, new = write_masked_np(np_flat.numpy(), enc, np.array(index),
                                         [(mode, np.array(mask, dtype=np.int64)) for mode, mask in steps])
    assert patterns.tolist() == want_patterns and new.tolist() == want_new
    assert same_bits(np_flat.numpy(), torch_flat_after(flat, enc, index, steps))
    assert same_bits(old, before[index].numpy())
    # and write_masked itself (which takes the numpy path here) agrees with both
    auto = flat.clone()
    write_masked(auto, enc, torch.tensor(index), [(mode, torch.tensor(mask)) for mode, mask in steps])
    assert same_bits(auto.numpy(), np_flat.numpy())


def torch_flat_after(flat: torch.Tensor, enc: Encoding, index: list[int], steps) -> np.ndarray:
    out = flat.clone()
    with mock.patch.object(flips, "numpy_writable", return_value=False):
        write_masked(out, enc, torch.tensor(index), [(mode, torch.tensor(mask)) for mode, mask in steps])
    return out.numpy()


@settings(max_examples=300, deadline=None)
@given(case=integer_encodings(), data=st.data())
def test_integer_codes_two_complement_and_affine(case, data):
    enc, codes = case
    check(enc, codes, *steps_and_index(data, enc, len(codes)))


@settings(max_examples=200, deadline=None)
@given(case=rquant_encodings(), data=st.data())
def test_rquant_codes(case, data):
    enc, codes = case
    check(enc, codes, *steps_and_index(data, enc, len(codes)))


@settings(max_examples=300, deadline=None)
@given(case=float_encodings(), data=st.data())
def test_ieee_float_bits(case, data):
    enc, codes = case
    check(enc, codes, *steps_and_index(data, enc, len(codes)))


def test_every_encoding_kind_is_covered():
    """The strategies above reach each storage kind (a new float format or Encoding subclass shows up here)."""
    assert sorted(FLOAT_FORMATS) == ["bf16", "fp16", "fp32"]
    assert {cls.__name__ for cls in Encoding.__subclasses__()} == {"RQuantEncoding"}
    assert set(MODES) == set(OPS)

"""Item 7 (issue 13): per-trial fault injection on ResNet-18, qfi against pytorchfi 0.6, side by side.

Model: torchvision ResNet-18 (qfi's ``resnet18``: random init, 10 classes, CIFAR stem), ~11.2 M weights in its
conv layers; both tools fault those conv weights only, as 8-bit codes. One torch thread, one process; each of
5 repeats runs every path below once, in a rotating order (``_bench_common.paired``; ratios are medians of the
per-repeat ratios). What each timed call does:

* ``qfi_trial``: ``with qfi_trial_weights(model, injector, t): pass`` for a new trial ``t``, nothing else. The
  model is ``quantize_model(resnet18, "minmax", wbits=8, abits=32, first_last_bits=None)`` (8-bit symmetric
  min-max weights, per tensor, on every layer; float activations) with ``FaultInjector(model,
  FaultConfig(ber=B, layers=<the conv layers>), seed=0)`` attached, inside ``frozen_weights(model)`` (entered once,
  outside the timing: an evaluation quantizes once). ``qfi_trial_weights`` is the ONE place this script calls
  qfi's per-trial API: ``with injector.trial(t)``, which samples the trial's bits, writes the faulty entries into
  the frozen weights in place and restores them when the block ends. The time covers getting the faulty weights
  in place AND leaving the block (restoring the clean state), i.e. one trial's whole weight cost, no forward.
* ``pytorchfi_trial``: what a pytorchfi user runs per trial to get a corrupted model: draw N fault sites with
  pytorchfi's ``weight_error_models.random_weight_location(pfi, layer)`` (the layer drawn in proportion to its
  weight count, so every weight is equally likely), then ``pfi.declare_weight_fi(function=flip, layer_num=...,
  k=..., dim1=..., dim2=..., dim3=...)``, which deep-copies the model and calls ``flip`` on each site. ``pfi`` is
  pytorchfi's ``neuron_error_models.single_bit_flip_func(model, 32, input_shape=[3, 32, 32],
  layer_types=[nn.Conv2d], bits=8)``; ``flip`` flips one random bit (``random.randint(0, 7)``, as pytorchfi's
  own bit-flip model does) with pytorchfi's ``_flip_bit_signed(value, layer_max, bit)``: its own 8-bit code
  ``int(w / layer_max * 2**7)``, two's complement, flip, back to float. ``layer_max`` is the layer's max |w|, and
  before timing each conv weight is put on that 8-bit grid once (``trunc(w / max * 128)`` clamped to [-128, 127],
  times ``max / 128``). N is the BER's expected number of flips, ``round(ber x 8 x conv weights)``, the same in
  every trial (sites drawn with replacement, as ``random_weight_location`` does).
* ``quantize_only``: ``with frozen_weights(copy): pass`` on a copy of qfi's quantized model with no injector
  (every layer quantized from its float weights, no faults).
* ``clean_forward``: one forward of 32 CIFAR-shaped images through a clean copy whose quantized weights are
  frozen once (``torch.inference_mode()``).
* ``sampler_only`` and ``clone_weights`` (for the notes, no row): qfi's sampler alone
  (``NestedBitSampler(n_bits, stream_key(0, t, layer)).positions(ber)`` for every conv layer), and one ``clone()``
  of every conv layer's weight.

Without pytorchfi (``pip install 'qfi[bench]'``) its rows say "not installed" and everything else still runs.
"""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import random
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

import _bench_common as bc
from bench_eval import cifar_like
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.models import build_model
from qfi_cli.quant import frozen_weights, quantize_model, quantized_layers

BERS = (1e-5, 1e-4, 1e-3)
BITS = 8
BATCH = 32
VS_PEER = {1e-4: 100.0}  # qfi at least this many times faster than pytorchfi
VS_QUANTIZE = {1e-5: 0.1, 1e-4: 0.25}  # qfi's trial at most this share of its quantize-only time
NOT_INSTALLED = "not installed (pip install 'qfi[bench]')"
REPEATS = 5  # _bench_common's floor, not its default: one pytorchfi trial at ber 1e-3 takes seconds


@contextmanager
def qfi_trial_weights(model: nn.Module, injector: FaultInjector, trial: int) -> Iterator[int]:
    """THE adapter to qfi's per-trial API (the only qfi call this benchmark times for a trial).

    Inside the block the model computes with trial ``trial``'s faulty weights; after it, the model is clean
    again. Yields the number of bits the trial flipped. Needs ``frozen_weights(model)`` around it (once per
    evaluation): ``injector.trial`` writes the faulty entries in place and undoes them, O(flips).
    """
    with injector.trial(trial):
        yield injector.flips_total()


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


# -- pytorchfi ----------------------------------------------------------------------------------------------------
class PytorchfiTrials:
    """pytorchfi 0.6 driven as its users drive it: fault sites from its weight error model's location helper,
    one bit flipped per site with its own signed 8-bit conversion, through ``declare_weight_fi``."""

    def __init__(self, float_model: nn.Module) -> None:
        from pytorchfi.neuron_error_models import single_bit_flip_func
        from pytorchfi.weight_error_models import random_weight_location

        self.locate = random_weight_location
        self.model = copy.deepcopy(float_model).eval()
        self.maxes, self.sizes = [], []
        with torch.no_grad():
            for _, m in conv_layers(self.model):  # pytorchfi numbers its conv layers in this (modules()) order
                top = m.weight.abs().max()
                codes = torch.trunc(m.weight / top * 2 ** (BITS - 1)).clamp(-(2 ** (BITS - 1)), 2 ** (BITS - 1) - 1)
                m.weight.copy_(codes * top / 2 ** (BITS - 1))
                self.maxes.append(float(top))
                self.sizes.append(m.weight.numel())
        self.pfi = single_bit_flip_func(self.model, BATCH, input_shape=[3, 32, 32], layer_types=[nn.Conv2d],
                                        use_cuda=False, bits=BITS)
        self.split: list[tuple[float, float]] = []  # (drawing the sites, declare_weight_fi) per call
        self.last: nn.Module | None = None

    def _flip(self, layer_num: list[int]) -> Callable[[torch.Tensor, tuple], torch.Tensor]:
        """declare_weight_fi's custom function: flip one random bit of the weight at ``location``.

        declare_weight_fi visits the faulted layers in order and hands over only the weight tensor, so the k-th
        distinct tensor seen is the k-th faulted layer (that is how the layer's range is found)."""
        faulted, seen = sorted(set(layer_num)), {"tensor": None, "k": -1}

        def flip(data: torch.Tensor, location: tuple) -> torch.Tensor:
            if data is not seen["tensor"]:
                seen["tensor"], seen["k"] = data, seen["k"] + 1
            top = self.maxes[faulted[seen["k"]]]
            return self.pfi._flip_bit_signed(data[location], top, random.randint(0, BITS - 1))

        return flip

    def trial(self, n_faults: int) -> nn.Module:
        start = time.perf_counter()
        layers = random.choices(range(len(self.sizes)), weights=self.sizes, k=n_faults)
        sites = [self.locate(self.pfi, layer) for layer in layers]
        layer_num, k, c, h, w = ([s[i][0] for s in sites] for i in range(5))
        drawn = time.perf_counter()
        corrupted = self.pfi.declare_weight_fi(function=self._flip(layer_num), layer_num=layer_num, k=k,
                                               dim1=c, dim2=h, dim3=w)
        self.split.append((drawn - start, time.perf_counter() - drawn))
        self.last = corrupted
        return corrupted

    def weights_changed(self) -> int:
        """Conv weights that differ between the last corrupted model and the clean one."""
        pairs = zip(conv_layers(self.model), conv_layers(self.last))
        return sum(int((a.weight != b.weight).sum()) for (_, a), (_, b) in pairs)


def make_pytorchfi(float_model: nn.Module) -> PytorchfiTrials | None:
    try:
        import pytorchfi  # noqa: F401
    except ImportError:
        return None
    return PytorchfiTrials(float_model)


# -- the measurement ----------------------------------------------------------------------------------------------
def measure(device: str = "cpu", suffix: str = "") -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    random.seed(0)
    float_model = build_model("resnet18", num_classes=10, in_channels=3).eval()
    model = quantize_model(copy.deepcopy(float_model), "minmax", wbits=BITS, abits=32, first_last_bits=None).eval()
    plain, forward_model = copy.deepcopy(model), copy.deepcopy(model)
    convs = [name for name, m in quantized_layers(model) if isinstance(m, nn.Conv2d)]
    conv_sizes = {name: m.weight.numel() for name, m in quantized_layers(model) if name in convs}
    n_weights = sum(conv_sizes.values())
    n_bits = BITS * n_weights
    x = next(cifar_like(BATCH, BATCH).batches("test", BATCH))[0]
    peer = make_pytorchfi(float_model) if device == "cpu" else None
    trials = itertools.count()
    rows: list[dict] = []
    details: dict[str, Any] = {"model": "resnet18", "conv_layers": len(convs), "conv_weights": n_weights,
                               "weight_bits": n_bits, "batch": BATCH, "bers": {},
                               "pytorchfi": importlib.metadata.version("pytorchfi") if peer is not None else None}
    conv_weights = [m.weight for name, m in quantized_layers(model) if name in conv_sizes]

    def clean_forward() -> None:
        with torch.inference_mode():
            forward_model(x)

    with frozen_weights(forward_model), frozen_weights(model):
        for ber in BERS:
            n_faults = round(ber * n_bits)
            injector = FaultInjector(model, FaultConfig(ber=ber, layers=convs), seed=0)
            if injector.exposed_weight_bits() != n_bits:
                raise RuntimeError("qfi must expose exactly the conv weights' bits, as pytorchfi does")
            flips: list[int] = []

            def qfi_trial() -> None:
                with qfi_trial_weights(model, injector, next(trials)) as flipped:
                    flips.append(flipped)

            def sampler_only() -> None:
                t = next(trials)
                for name, size in conv_sizes.items():
                    NestedBitSampler(size * BITS, stream_key(0, t, name, 0)).positions(ber)

            def quantize_only() -> None:
                with frozen_weights(plain):
                    pass

            fns: dict[str, Callable[[], Any]] = {
                "qfi_trial": qfi_trial, "quantize_only": quantize_only,
                "clean_forward": clean_forward, "sampler_only": sampler_only,
                "clone_weights": lambda: [w.clone() for w in conv_weights]}
            if peer is not None:
                peer.split.clear()
                fns["pytorchfi_trial"] = lambda: peer.trial(n_faults)
            times = bc.paired(fns, repeats=REPEATS, device=device,
                              warmup=1 if ber == BERS[0] else 0)  # later rates: everything is warm
            injector.detach()
            name = bc.ber(ber)
            d = details["bers"][name] = {"seconds": bc.medians(times), "qfi_flips_per_trial": flips[-1],
                                         "expected_flips": ber * n_bits}
            if peer is not None:
                d["pytorchfi_faults_per_trial"] = n_faults
                d["pytorchfi_weights_changed_last_trial"] = peer.weights_changed()
                d["pytorchfi_split_seconds"] = {
                    "draw_sites": bc.medians({"x": [s[0] for s in peer.split]})["x"],
                    "declare_weight_fi": bc.medians({"x": [s[1] for s in peer.split]})["x"]}
                rows.append(bc.speedup(f"7. per-trial injection, ResNet-18, ber {name}: qfi vs pytorchfi{suffix}",
                                       bc.ratio(times, "pytorchfi_trial", "qfi_trial"), VS_PEER.get(ber)))
            else:
                target = f"≥ {VS_PEER[ber]:g}x faster" if ber in VS_PEER else "—"
                why = NOT_INSTALLED if device == "cpu" else "pytorchfi runs on the CPU only here"
                rows.append(bc.not_measured(f"7. per-trial injection, ResNet-18, ber {name}: qfi vs pytorchfi"
                                            f"{suffix}", target, why))
            vs_quant = bc.ratio(times, "qfi_trial", "quantize_only")
            item = f"7. qfi per-trial injection vs quantize-only, ResNet-18, ber {name}{suffix}"
            rows.append(bc.at_most(item, vs_quant, VS_QUANTIZE[ber]) if ber in VS_QUANTIZE
                        else bc.row(item, vs_quant, "—", None))
            rows.append(bc.row(f"7. qfi per-trial injection vs a clean forward of one batch ({BATCH} images), "
                               f"ResNet-18, ber {name}{suffix}", bc.ratio(times, "qfi_trial", "clean_forward"),
                               "—", None))
    return rows, details


def notes_for(rows: list[dict], details: dict) -> list[str]:
    """The section's notes: every figure in them comes from ``details`` (this run)."""
    notes = [f"Peer (scripts/bench_peer.py): ResNet-18, {details['conv_weights']:,} conv weights as {BITS}-bit codes "
             f"({details['conv_layers']} conv layers); a trial's time is getting its faulty weights in place and "
             "back (no forward). qfi: qfi_trial_weights (the script's adapter to the per-trial API), "
             f"{BITS}-bit min-max weights (quantize_model); pytorchfi {details['pytorchfi'] or '(not installed)'}: "
             "fault sites from random_weight_location, then declare_weight_fi with a custom function that flips one "
             "random bit of the weight's code through pytorchfi's own _flip_bit_signed (code = int(w / max|w| x "
             f"{2 ** (BITS - 1)}), two's complement), as many sites per trial as the rate's expected flips (ber x "
             f"{BITS} x weights)."]
    parts = []
    for name, d in details["bers"].items():
        s = d["seconds"]
        peer = ""
        if "pytorchfi_trial" in s:
            split = d["pytorchfi_split_seconds"]
            peer = (f"pytorchfi {bc.ms(s['pytorchfi_trial'])} ({d['pytorchfi_faults_per_trial']:,} faults: "
                    f"{bc.ms(split['draw_sites'])} drawing the sites, {bc.ms(split['declare_weight_fi'])} in "
                    f"declare_weight_fi; {d['pytorchfi_weights_changed_last_trial']:,} weights changed), ")
        parts.append(f"ber {name}: {peer}qfi {bc.ms(s['qfi_trial'])} ({d['qfi_flips_per_trial']:,} bits flipped), "
                     f"qfi quantize-only {bc.ms(s['quantize_only'])}")
    first = next(iter(details["bers"].values()))["seconds"]
    notes.append("Per trial, medians of this run: " + "; ".join(parts) + f". A clean forward of {details['batch']} "
                 f"CIFAR-shaped images takes {bc.ms(first['clean_forward'])}.")
    if not details["pytorchfi"]:
        notes.append("pytorchfi is not installed, so its rows were not measured: `pip install 'qfi[bench]'` (or "
                     "`make bench`, which installs that extra).")
    missed = [r["item"].rsplit("ber ", 1)[1] for r in rows if r["met"] is False and "vs quantize-only" in r["item"]]
    if missed:
        s = details["bers"][missed[0]]["seconds"]
        rest = s["qfi_trial"] - s["quantize_only"] - s["sampler_only"] - s["clone_weights"]
        why = ("A trial that costs more than quantizing every layer alone still re-quantizes (or copies) every "
               "layer; what gets there is quantizing once per evaluation and applying each trial's flips in place "
               "(and undoing them), so that a trial costs its flips." if s["qfi_trial"] >= s["quantize_only"] else "")
        notes.append(f"Missed (qfi trial vs quantize-only, ber {', '.join(missed)}): at ber {missed[0]} a trial "
                     f"takes {bc.ms(s['qfi_trial'])}. For scale, timed alone in this run: quantizing every layer "
                     f"{bc.ms(s['quantize_only'])}, qfi's sampler for every conv layer {bc.ms(s['sampler_only'])}, a "
                     f"clone() of every conv weight {bc.ms(s['clone_weights'])}"
                     + (f"; the trial takes {bc.ms(rest)} beyond those three (bit masks, gather/scatter, Python per "
                        "layer)" if rest > 0 else "") + ". " + why)
    return notes


def main() -> None:
    bc.setup()
    print("bench 7: per-trial injection, qfi vs pytorchfi (ResNet-18)")
    rows, details = measure("cpu")
    bc.record("7_peer", "per-trial injection against pytorchfi", rows, details, notes_for(rows, details),
              repeats=REPEATS)


if __name__ == "__main__":
    main()

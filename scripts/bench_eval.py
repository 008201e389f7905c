"""Item 2: inject-eval against clean evaluation, and quantized evaluation against the float model.

Both go through the engine's own code paths: ``FaultInjector`` + ``frozen_weights`` + ``predict_correct`` (what
``qfi inject-eval`` runs per trial). Two workloads: ResNet-20 (8-bit LSQ weights and activations, first/last layer
8 bits) on CIFAR-shaped data (random uint8 images, 256 test images in one batch), and digits_cnn on the
embedded digits data (450 test images, the engine's batch of 1000).

(a) T = 5 trials at ber 1e-3 (quantize, inject, evaluate each) against T clean evaluations of the same model.
(b) One evaluation of the quantized model with cached (frozen) weights against the float model it was made from,
    run under ``torch.inference_mode()`` with the same batches.

For the notes (no row): quantizing the weights alone (``frozen_weights`` with the injector disabled, no forward),
timed with (a), and the same quantized model with float activations (``abits=32``), timed with (b).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import _bench_common as bc
from qfi_cli.data import InMemoryDataset, load_dataset
from qfi_cli.engine.common import predict_correct
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.models import build_model
from qfi_cli.quant import calibrate, frozen_weights, quantize_model, quantized_layers

TRIALS = 5
BER = 1e-3


def cifar_like(n_train: int, n_test: int, device: str = "cpu", seed: int = 0) -> InMemoryDataset:
    """Random uint8 images shaped like CIFAR-10 (what the timing depends on), held like the real data set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    ds = InMemoryDataset("cifar_like", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10, 3, 32,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment="cifar")
    return ds.to(device)


def workloads(device: str) -> list[dict[str, Any]]:
    return [
        {"name": "resnet20", "data": cifar_like(256, 256, device), "batch": 256},
        {"name": "digits_cnn", "data": load_dataset("digits", device=device), "batch": 1000},
    ]


def models(name: str, data: InMemoryDataset, device: str) -> tuple[nn.Module, nn.Module]:
    """The float model and its quantized twin (8-bit LSQ weights and activations, calibrated), both in eval mode."""
    torch.manual_seed(0)
    float_model = build_model(name, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    quantized = quantize_model(copy.deepcopy(float_model), "lsq", wbits=8, abits=8).to(device)
    calibrate(quantized, next(data.batches("train", 256))[0])
    return float_model.eval(), quantized.eval()


def predict_float(model: nn.Module, data: InMemoryDataset, batch_size: int) -> torch.Tensor:
    """predict_correct's work for a float model, under inference_mode."""
    with torch.inference_mode():
        correct = []
        for x, y in data.batches("test", batch_size):
            logits = model(x)
            correct.append((logits.argmax(1) == y) & torch.isfinite(logits).all(1))
        return torch.cat(correct)


def measure(device: str = "cpu", suffix: str = "") -> tuple[list[dict], dict]:
    rows, details = [], {}
    for w in workloads(device):
        name, data, bs = w["name"], w["data"], w["batch"]
        float_model, model = models(name, data, device)
        injector = FaultInjector(model, FaultConfig(ber=BER), seed=0)
        trial = iter(range(10**9))

        def faulty() -> None:  # as inject_eval: quantize once, each trial's faults in place and undone
            with frozen_weights(model):
                for _ in range(TRIALS):
                    with injector.trial(next(trial)):
                        predict_correct(model, data, bs)

        def clean() -> None:
            with injector.disabled(), frozen_weights(model):
                for _ in range(TRIALS):
                    predict_correct(model, data, bs)

        def quantize_only() -> None:  # the weight quantization that both sides above pay once per evaluation
            with injector.disabled(), frozen_weights(model):
                pass

        times = bc.paired({"inject_eval": faulty, "clean_eval": clean, "quantize_only": quantize_only},
                          device=device)
        n_layers = len(injector.layers)
        injector.detach()
        r_inject = bc.ratio(times, "inject_eval", "clean_eval")

        def quant_eval(m: nn.Module = model) -> None:
            with frozen_weights(m):
                predict_correct(m, data, bs)

        weights_only = copy.deepcopy(model)  # the same quantized weights, float activations
        for _, layer in quantized_layers(weights_only):
            layer.abits = 32
        t2 = bc.paired({"quantized_cached": quant_eval,
                        "weights_only_cached": lambda: quant_eval(weights_only),
                        "float_inference": lambda: predict_float(float_model, data, bs)}, device=device)
        r_quant = bc.ratio(t2, "quantized_cached", "float_inference")
        details[name] = {"batch": bs, "test_images": data.size("test"), "trials": TRIALS, "ber": BER,
                         "quantized_layers": n_layers, "seconds": {**bc.medians(times), **bc.medians(t2)}}
        rows.append(bc.at_most(f"2. inject-eval, {TRIALS} trials at ber 1e-3 vs {TRIALS} clean evals, {name}{suffix}",
                               r_inject, 1.05))
        rows.append(bc.at_most(f"2. quantized eval (cached weights) vs float model (inference mode), {name}{suffix}",
                               r_quant, 1.15))
    return rows, details


def main() -> None:
    bc.setup()
    print("bench 2: inject-eval and quantized evaluation")
    rows, details = measure("cpu")
    notes = ["Eval: " + " and ".join(
        f"{name} ({d['test_images']} test images, batch {d['batch']})" for name, d in details.items())
        + ", 8-bit LSQ weights and activations, through FaultInjector + frozen_weights + predict_correct; the float "
        "model runs the same batches under torch.inference_mode()."]
    slow = [n.rsplit(", ", 1)[-1] for n in bc.missed(rows, "inject-eval")]
    if slow:
        parts = []
        for name in slow:  # the models that missed (a met model's difference can be below the timing noise)
            d = details[name]
            s = d["seconds"]
            extra = (s["inject_eval"] - s["clean_eval"]) / d["trials"]
            parts.append(f"{name}: {bc.ms(extra)} per trial over its {d['quantized_layers']} quantized layers "
                         f"({bc.ms(extra / d['quantized_layers'])} per layer), against a clean evaluation of "
                         f"{bc.ms(s['clean_eval'] / d['trials'])}, of which {bc.ms(s['quantize_only'])} quantize the "
                         "weights (timed alone)")
        notes.append(f"Missed (inject-eval, {', '.join(slow)}): medians of this run, the faults' cost (faulty minus "
                     "clean evaluation) is " + "; ".join(parts) + ". Trials are already in place and O(flips), "
                     "with one sampler call per trial for all layers; what remains is a few numpy calls per faulted "
                     "layer, paid against the evaluation of a small, fast test set.")
    slow = [n.rsplit(", ", 1)[-1] for n in bc.missed(rows, "quantized eval")]
    if slow:
        parts = []
        for name in slow:
            s = details[name]["seconds"]
            parts.append(f"{name}: float {bc.ms(s['float_inference'])}, quantized weights only "
                         f"{bc.ms(s['weights_only_cached'])}, quantized weights and activations "
                         f"{bc.ms(s['quantized_cached'])}")
        notes.append(f"Missed (quantized eval vs float, {', '.join(slow)}): one evaluation, medians of this run, "
                     + "; ".join(parts) + ". The difference between the last two is the activations' fake "
                     "quantization: elementwise, memory-bound passes over every quantized layer's input (x / s, "
                     "clamp, round, * s), already run in cache-sized pieces on the CPU. Exact division keeps the codes "
                     "bit-identical, so multiplying by 1/s or torch.fake_quantize_per_tensor_affine are out.")
    bc.record("2_eval", "inject-eval and quantized evaluation", rows, details, notes)


if __name__ == "__main__":
    main()

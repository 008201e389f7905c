"""Item 6: the figures of items 1-5 on CUDA, and several fault patterns evaluated in one batched forward.

On a machine with CUDA this script runs every other benchmark's ``measure("cuda")`` (rows marked [cuda]) and
times K = 8 fault patterns at ber 1e-3 evaluated in one forward batched over the patterns with ``torch.func.vmap``
against the same 8 patterns evaluated one by one. Without CUDA those rows say so; the batched-patterns comparison
still runs on the CPU (marked [cpu], no target; 64 ResNet-20 test images there) so that the code path stays
exercised and checked.

Batched patterns: the K faulty weight sets come from the engine's own FaultInjector (trial t -> pattern t) through
``frozen_weights``; ``vmap`` maps over the stacked weights, with each quantized layer's ``frozen_weight`` set to
its slice inside the mapped function, so the model code runs unchanged (a batched weight becomes a grouped
convolution). Both sides start from the same precomputed faulty weights and produce the same logits.
"""

from __future__ import annotations

import torch
from torch import nn

import _bench_common as bc
from bench_eval import cifar_like, models
from qfi_cli.data import load_dataset
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.quant import frozen_weights, quantized_layers

PATTERNS = 8
BER = 1e-3


def faulty_weights(model: nn.Module, patterns: int) -> dict[str, torch.Tensor]:
    """Each quantized layer's faulty frozen weights for trials 0..patterns-1, stacked: {layer: (K, *shape)}."""
    per_layer: dict[str, list[torch.Tensor]] = {name: [] for name, _ in quantized_layers(model)}
    with FaultInjector(model, FaultConfig(ber=BER), seed=0) as injector:
        for t in range(patterns):
            with frozen_weights(model), injector.trial(t):
                for name, m in quantized_layers(model):
                    per_layer[name].append(m.frozen_weight.clone())
    return {name: torch.stack(ws) for name, ws in per_layer.items()}


def with_weights(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The model's logits with each quantized layer computing on ``weights[name]`` (batched inside vmap)."""
    layers = dict(quantized_layers(model))
    try:
        for name, w in weights.items():
            layers[name].frozen_weight = w
        return model(x)
    finally:
        for m in layers.values():
            m.frozen_weight = None


def batched_patterns(device: str, suffix: str) -> tuple[list[dict], dict]:
    rows, details = [], {}
    cuda = torch.device(device).type == "cuda"
    for name, data, bs in (("resnet20", cifar_like(256, 256 if cuda else 64, device), 256),
                           ("digits_cnn", load_dataset("digits", device=device), 1000)):
        _, model = models(name, data, device)
        stacked = faulty_weights(model, PATTERNS)
        batches = list(data.batches("test", bs))

        @torch.no_grad()
        def one_by_one() -> torch.Tensor:
            return torch.stack([torch.cat([with_weights(model, {k: w[t] for k, w in stacked.items()}, x)
                                           for x, _ in batches]) for t in range(PATTERNS)])

        mapped = torch.func.vmap(lambda ws, x: with_weights(model, ws, x), in_dims=(0, None))

        @torch.no_grad()
        def batched() -> torch.Tensor:
            return torch.cat([mapped(stacked, x) for x, _ in batches], dim=1)

        a, b = one_by_one(), batched()
        same_predictions = float((a.argmax(-1) == b.argmax(-1)).float().mean())
        max_diff = float((a - b).abs().max())
        times = bc.paired({"one_by_one": one_by_one, "vmap_batched": batched}, device=device)
        speed = bc.ratio(times, "one_by_one", "vmap_batched")
        details[name] = {"patterns": PATTERNS, "ber": BER, "test_images": data.size("test"), "batch": bs,
                         "seconds": bc.medians(times), "same_argmax_fraction": same_predictions,
                         "max_abs_logit_difference": max_diff}
        rows.append(bc.speedup(f"6. {PATTERNS} fault patterns in one vmap forward vs one by one, {name}{suffix}",
                               speed, None, note=f"argmax agreement {same_predictions:.4f}"))
    return rows, details


def main() -> None:
    bc.setup()
    print("bench 6: CUDA figures and batched fault patterns")
    rows, details, notes = [], {}, []
    if torch.cuda.is_available():
        import bench_data
        import bench_eval
        import bench_sampler
        import bench_sweep
        import bench_train

        for module in (bench_sampler, bench_eval, bench_train, bench_data, bench_sweep):
            r, d = module.measure("cuda", " [cuda]")
            rows += r
            details[module.__name__] = d
        r, d = batched_patterns("cuda", " [cuda]")
        rows += r
        details["batched_patterns_cuda"] = d
        notes.append(f"CUDA: {torch.cuda.get_device_name(0)}; rows marked [cuda] repeat items 1-5 with the model, "
                     "data and codes on the GPU (the sampler itself runs on the CPU).")
    else:
        rows.append(bc.not_measured("6. items 1-5 on CUDA", "as items 1-5"))
        rows.append(bc.not_measured(f"6. {PATTERNS} fault patterns in one vmap forward vs one by one [cuda]", "—"))
    r, d = batched_patterns("cpu", " [cpu]")
    rows += r
    details["batched_patterns_cpu"] = d
    notes.append(f"Batched patterns: {PATTERNS} faulty weight sets at ber {bc.ber(BER)} from FaultInjector, evaluated "
                 "with torch.func.vmap over the stacked frozen weights (grouped convolutions) against one by one; no "
                 "target is set for them.")
    bc.record("6_cuda", "CUDA and batched fault patterns", rows, details, notes)


if __name__ == "__main__":
    main()

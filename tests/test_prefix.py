"""Prefix reuse (qfi_cli.engine.prefix): forwards that recompute only what the faulty layers feed give the full
forward's results bit for bit, on a chain (digits_cnn), a network with skip connections (resnet20) and attention
(vit_tiny), and whole sensitivity maps are identical with it on and off."""

from __future__ import annotations

import pytest
import torch

from qfi_cli.data import load_dataset
from qfi_cli.engine.common import predict_correct
from qfi_cli.engine.prefix import PrefixReuse
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.models import build_model
from qfi_cli.quant import calibrate, frozen_weights, quantize_model, quantized_layers


def _quantized(name: str, data) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=data.in_channels)
    model = quantize_model(model, "lsq", wbits=8, abits=8)
    calibrate(model, next(data.batches("train", 64))[0])
    return model.eval()


@pytest.mark.parametrize("name", ["digits_cnn", "resnet20", "vit_tiny"])
def test_faulty_forwards_equal_the_full_forward(name: str) -> None:
    data = load_dataset("digits")
    model = _quantized(name, data)
    reuse = PrefixReuse.build(model)
    assert reuse is not None, "the model traces"
    layers = [n for n, _ in quantized_layers(model)]
    with frozen_weights(model):
        clean = predict_correct(model, data, 128, limit=200)
        with torch.no_grad():
            clean_logits = torch.cat([model(x) for x, _ in data.batches("test", 128, limit=200)])
        for layer in (layers[len(layers) // 2], layers[-1]):
            cfg = FaultConfig(ber=0.02, layers=[layer]).validated()
            with FaultInjector(model, cfg, seed=0) as injector:
                predict = reuse.for_injector(injector, data, 128, 200)
                assert predict is not None
                for t in range(3):
                    with injector.trial(t, ber=0.02):
                        assert injector.flips_total() > 0
                        full, fast = predict_correct(model, data, 128, limit=200), predict()
                        with torch.no_grad():
                            logits = torch.cat([model(x) for x, _ in data.batches("test", 128, limit=200)])
                        assert torch.equal(logits, torch.cat(predict.logits()))  # bit for bit
                    assert torch.equal(full[0], fast[0]) and full[1] == fast[1]
                    assert not torch.equal(logits, clean_logits)  # the faults did change the output
        assert torch.equal(predict_correct(model, data, 128, limit=200)[0], clean[0])  # restored


def test_only_downstream_nodes_run_again() -> None:
    data = load_dataset("digits")
    model = _quantized("digits_cnn", data)
    reuse = PrefixReuse.build(model)
    names = [n for n, _ in quantized_layers(model)]
    assert names[0] in reuse.downstream([names[0]]) and names[-1] in reuse.downstream([names[0]])
    assert names[0] not in reuse.downstream([names[-1]]) and len(reuse.downstream([names[-1]])) < 4


def test_not_used_where_it_cannot_help_or_apply() -> None:
    data = load_dataset("digits")
    model = _quantized("digits_cnn", data)
    reuse = PrefixReuse.build(model)
    with frozen_weights(model):
        with FaultInjector(model, FaultConfig(ber=0.01).validated(), seed=0) as everywhere:
            assert reuse.for_injector(everywhere, data, 128) is None  # every layer faulty: the full forward
        acts = FaultConfig(ber=0.01, target="activations", layers=["fc"]).validated()
        with FaultInjector(model, acts, seed=0) as injector:
            assert reuse.for_injector(injector, data, 128) is None  # faults during the forward
    assert reuse.predictor(["fc"], data, 128, max_bytes=16) is None  # frontier over the memory cap


def test_sensitivity_map_identical_with_and_without_reuse(trained_digits) -> None:
    from qfi_cli.engine.sensitivity import sensitivity

    checkpoint, cfg = trained_digits
    base = {**cfg, "command": "sensitivity", "fault": {**cfg["fault"], "ber": 0.02},
            "eval": {**cfg["eval"], "trials": 3, "limit": 150}}
    on, off = (sensitivity(base | {"eval": base["eval"] | {"prefix_reuse": flag}}, checkpoint)[0]
               for flag in (True, False))
    assert [(c.label, c.stats and c.stats.accuracies, c.stats and c.stats.rerrs) for c in on.cells] == \
           [(c.label, c.stats and c.stats.accuracies, c.stats and c.stats.rerrs) for c in off.cells]

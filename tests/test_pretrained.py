"""Pretrained torchvision models through the CLI: ``model._target_=torchvision.models.<name>`` with float weights
from ``model.init`` and post-training quantization (``train.epochs=0``) calibrated on ``eval.calib`` training
batches, then faults. (Random float weights stand in for downloaded ones: tests never download.)"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.data import load_dataset
from qfi_cli.engine.train import calibration_images
from qfi_cli.quant import quantized_layers

torchvision = pytest.importorskip("torchvision")


def tiny_rgb(n: int = 96) -> dict:
    """A ``data._target_``: ``n`` random 3 x 32 x 32 uint8 images per split, 10 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2 * n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (2 * n,), generator=g)
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:], "num_classes": 10}


def test_ptq_of_a_torchvision_model_from_its_float_weights_then_faults(in_tmp):
    torch.manual_seed(0)
    weights = in_tmp / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    run = in_tmp / "ptq"
    common = ["model._target_=torchvision.models.resnet18", "model.num_classes=10",
              "data._target_=tests.test_pretrained.tiny_rgb",
              "device=cpu"]
    result = CliRunner().invoke(app, ["train", "--out", str(run), f"model.init={weights}", "train.epochs=0",
                                      "train.batch_size=32", "eval.calib=3", *common])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["metrics"]["epochs"] == 0 and ckpt["config"]["eval"]["calib"] == 3
    # the float weights arrived (the checkpoint keeps the float weights beside the quantizers' state)
    state = torch.load(weights, weights_only=True)
    assert torch.allclose(ckpt["state_dict"]["fc.weight"], state["fc.weight"])
    result = CliRunner().invoke(app, ["inject-eval", "--checkpoint", str(run / "model.pt"), "--ber", "1e-3",
                                      "--trials", "2", "--out", str(in_tmp / "eval"), *common])
    assert result.exit_code == 0, result.output
    res = json.loads((in_tmp / "eval" / "results.json").read_text())
    n_weights = sum(m.weight.numel() for m in torchvision.models.resnet18(num_classes=10).modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert res["bits_total"] == 8 * n_weights  # every conv and the fc, 8 bits each
    assert res["clean_accuracy"] == ckpt["metrics"]["test_accuracy"] and len(res["accuracies"]) == 2


def test_calibration_sees_eval_calib_batches():
    """LSQ's activation step is 2 mean|x| / sqrt(Qp) over the calibration images: with eval.calib = 3 it is the
    mean over the first three batches, not the first batch's."""
    from qfi_cli.config import RunConfig
    from qfi_cli.engine.common import build_quantized_model
    from qfi_cli.quant import calibrate

    data = load_dataset("digits")
    cfg = RunConfig.from_dict({"device": "cpu"})
    steps = {}
    for n in (1, 3):
        torch.manual_seed(0)
        model = build_quantized_model(cfg, data)
        calibrate(model, calibration_images(data, 128, n))
        _, first = quantized_layers(model)[0]
        steps[n] = float(first.quan_a_fn.step.detach())
        x = calibration_images(data, 128, n)
        assert steps[n] == pytest.approx(float(2 * x.abs().mean() / (2 ** 7 - 1) ** 0.5), rel=1e-5)
    assert steps[1] != steps[3]

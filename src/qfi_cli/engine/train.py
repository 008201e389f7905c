"""``qfi train``: quantization-aware training with SAM on the quantized weights (injection off by default)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qfi_cli.data import load_dataset
from qfi_cli.engine.common import build_quantized_model, predict_correct, resolve_device, seed_everything
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.io import load_checkpoint, save_checkpoint, write_json
from qfi_cli.optim import SAM
from qfi_cli.progress import Reporter
from qfi_cli.quant import calibrate

LAST = "last.pt"
MODEL = "model.pt"
METRICS = "metrics.json"


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(epochs * 0.5), int(epochs * 0.75)], 0.1)
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise QfiError(f"unknown train.schedule {kind!r}; choose one of: cosine, step, none")


def train(cfg: dict[str, Any], out_dir: str | Path, reporter: Reporter | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train the quantized model that ``cfg`` describes; write ``model.pt`` and ``metrics.json`` to ``out_dir``.

    ``cfg`` is the composed config as a plain dict (see ``conf/config.yaml``). With ``resume``, training
    continues from ``out_dir/last.pt`` (written atomically after every epoch) and ends with the same weights as
    an uninterrupted run. Example (``cfg`` as composed from conf/, e.g. ``.hydra/config.yaml`` of a run)::

        metrics = train(cfg, "runs/w4")   # -> runs/w4/model.pt, runs/w4/metrics.json
    """
    reporter = reporter or Reporter()
    out_dir = Path(out_dir)
    tcfg = cfg["train"]
    epochs = int(tcfg["epochs"])
    if epochs < 1:
        raise QfiError(f"train.epochs must be >= 1, got {epochs}")
    start_time = time.perf_counter()
    device = resolve_device(cfg["device"])
    seed_everything(int(cfg["seed"]))
    data = load_dataset(cfg["data"]["name"], cfg["data"].get("root"), device)
    model = build_quantized_model(cfg, data).to(device)
    limit = tcfg.get("limit")
    calibrate(model, next(data.batches("train", int(tcfg["batch_size"]), limit=limit))[0])
    base = torch.optim.SGD(model.parameters(), lr=float(tcfg["lr"]), momentum=float(tcfg["momentum"]),
                           weight_decay=float(tcfg["weight_decay"]), nesterov=bool(tcfg.get("nesterov", False)))
    scheduler = _scheduler(base, tcfg["schedule"], epochs)
    fault = FaultConfig.from_dict(cfg["fault"])
    injector = FaultInjector(model, fault, seed=int(cfg["seed"])) if fault.enable_in_training else None
    scfg = cfg["sam"]
    sam = SAM(model, base, rho=float(scfg["rho"]), adaptive=bool(scfg["adaptive"]), eta=float(scfg["eta"]),
              grad_clip=tcfg.get("grad_clip"), injector=injector)
    generator = torch.Generator(device=device).manual_seed(int(cfg["seed"]))

    start_epoch, history, prior_seconds = 0, [], 0.0
    if resume:
        if not (out_dir / LAST).is_file():
            raise QfiError(f"nothing to resume in {out_dir}: no {LAST} (start without --resume)")
        state = load_checkpoint(out_dir / LAST, map_location=device)
        model.load_state_dict(state["state_dict"])
        base.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch, history = int(state["epoch"]), list(state["history"])
        prior_seconds = float(state["seconds"])
        reporter.log(f"resuming from epoch {start_epoch} of {epochs}")

    batch_size = int(tcfg["batch_size"])
    steps = data.num_batches("train", batch_size, limit=limit)
    with reporter.task("train", total=(epochs - start_epoch) * steps) as advance:
        for epoch in range(start_epoch, epochs):
            model.train()
            loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
            for x, y in data.batches("train", batch_size, shuffle=True, generator=generator, augment=True,
                                     limit=limit):
                logits_box: list[torch.Tensor] = []

                def loss_fn() -> torch.Tensor:
                    logits = model(x)
                    logits_box.append(logits.detach())
                    return F.cross_entropy(logits, y)

                loss = sam.step(loss_fn)
                loss_sum += loss * len(y)
                correct += (logits_box[0].argmax(1) == y).sum()
                seen += len(y)
                advance(1, "")
            scheduler.step()
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                raise QfiError(f"training diverged at epoch {epoch + 1} (loss {train_loss}): lower train.lr or rho")
            model.eval()
            correct_test = predict_correct(model, data, int(cfg["eval"]["batch_size"]))[0]
            test_acc = int(correct_test.sum()) / correct_test.numel()
            history.append({"epoch": epoch + 1, "train_loss": train_loss,
                            "train_accuracy": float(correct) / seen, "test_accuracy": test_acc})
            advance(0, f"epoch {epoch + 1}/{epochs} loss {train_loss:.4f} test acc {test_acc:.4f}")
            save_checkpoint(out_dir / LAST, model.state_dict(), cfg, epoch=epoch + 1, history=history,
                            optimizer=base.state_dict(), scheduler=scheduler.state_dict(),
                            generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                            seconds=prior_seconds + time.perf_counter() - start_time)
    if injector is not None:
        injector.detach()
    last = history[-1]
    metrics = {"test_accuracy": last["test_accuracy"], "train_loss": last["train_loss"],
               "train_accuracy": last["train_accuracy"], "epochs": epochs,
               "seconds": round(prior_seconds + time.perf_counter() - start_time, 3), "device": str(device),
               "history": history}
    save_checkpoint(out_dir / MODEL, model.state_dict(), cfg, metrics={k: v for k, v in metrics.items()
                                                                       if k != "history"})
    write_json(out_dir / METRICS, metrics)
    return metrics

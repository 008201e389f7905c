"""``qfi inject-eval``: accuracy of a trained quantized model under bit errors, over independent trials.

One job evaluates one model at one or several rates (``eval.bers``): the model is loaded and quantized once, each
trial writes its faults into the frozen weights in place and undoes them (O(flips) per trial), and trial ``t`` at a
lower rate flips a subset of the bits it flips at a higher rate (nested patterns), so a BER curve costs one job.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from qfi_cli.config import DataConfig, RunConfig
from qfi_cli.data import InMemoryDataset
from qfi_cli.engine.common import build_quantized_model, load_data, predict_correct, resolve_device
from qfi_cli.errors import QfiError, first_line
from qfi_cli.faults import FaultInjector
from qfi_cli.io import load_checkpoint
from qfi_cli.models import model_label
from qfi_cli.progress import Reporter
from qfi_cli.quant import frozen_weights, weight_bits_total
from qfi_cli.stats import bootstrap_ci, describe_ci


def mean_ci95(values: list[float]) -> tuple[float, float, list[float] | None]:
    """Mean, sample standard deviation and 95% bootstrap percentile interval of the mean (None below 2 values).

    The interval covers the fault patterns (trials) of one model and stays inside the trials' range: trial
    accuracies are skewed (most near clean, a few collapses), so no symmetric interval.

    >>> mean, std, ci = mean_ci95([0.5, 0.7])
    >>> round(mean, 12), round(std, 6), ci
    (0.6, 0.141421, [0.5, 0.7])
    """
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    low, high = bootstrap_ci(values)
    return mean, std, None if low is None else [low, high]


def _fraction(mask: torch.Tensor) -> float:
    """Exact fraction of True entries (a count over a count, not a float32 mean)."""
    return int(mask.sum()) / mask.numel()


@lru_cache(maxsize=4)
def _cached_dataset(spec: str, root: str | None, device: str) -> InMemoryDataset:
    return load_data(DataConfig.from_plain(json.loads(spec), "data"), device, root)


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def load_trained(checkpoint: str | Path, device: torch.device, data_root: str | None = None,
                 expect: dict[str, Any] | None = None) -> tuple[torch.nn.Module, InMemoryDataset, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint; returns (model in eval mode, data set, checkpoint contents).

    ``expect`` maps dotted config keys (``model.name``, ``quant.wbits``) to the values the caller asked for; a
    checkpoint trained otherwise is refused. Data sets stay cached in the process, so a sweep on the basic
    launcher loads each one once.
    """
    ckpt = load_checkpoint(checkpoint, map_location=device)
    saved = ckpt["config"]
    for key, wanted in (expect or {}).items():
        if _select(saved, key) != wanted:
            raise QfiError(f"checkpoint {checkpoint} was trained with {key}={_select(saved, key)}, not {wanted}: "
                           "pass a matching --checkpoint (or sweep with --train)")
    try:
        tcfg = RunConfig.from_dict(saved)
    except QfiError as e:
        raise QfiError(f"checkpoint {checkpoint} holds a config this qfi cannot read: {e}") from None
    try:
        root = data_root if data_root is not None else tcfg.data.root
        data = _cached_dataset(json.dumps(tcfg.data.as_dict(), sort_keys=True), root, str(device))
        model = build_quantized_model(tcfg, data, init=False).to(device)  # model.pt's weights, not model.init
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise QfiError(f"checkpoint {checkpoint} does not match its model config: {first_line(e, 200)}") from None
    return model.eval(), data, ckpt


def rates(cfg: RunConfig) -> list[tuple[float | None, int | None]]:
    """The (ber, count) levels one job evaluates, ascending: ``eval.bers`` or ``fault.ber``; ``fault.count`` for
    ``bitflip_count``."""
    fault = cfg.fault
    if fault.fault_model.counted:
        if cfg.eval.bers:
            raise QfiError("eval.bers does not apply to fault.model=bitflip_count (it flips fault.count bits)")
        return [(None, fault.count)]
    return [(b, None) for b in sorted(set(cfg.eval.bers or [fault.ber]))]


def inject_eval(cfg: RunConfig | dict[str, Any], checkpoint: str | Path, reporter: Reporter | None = None,
                expect: dict[str, Any] | None = None,
                on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate ``checkpoint`` under ``cfg.fault`` for ``cfg.eval.trials`` trials at each rate; one result per rate.

    Weight faults of a trial are fixed (persistence ``trial``): the model is quantized once, each trial's faults are
    written into the frozen weights and undone afterwards. Trial t's pattern depends only on (fault seed, t, rate,
    layer), so two models or two rates are compared on nested, identical faults. ``on_result`` receives each
    rate's result as soon as it is complete (a sweep writes it then: an interrupted job keeps finished rates).
    Example::

        [res] = inject_eval(cfg, "runs/w4/model.pt")   # res["accuracy_mean"], res["accuracies"], ...
    """
    cfg = RunConfig.from_dict(cfg)
    reporter = reporter or Reporter()
    start = time.perf_counter()
    fault, trials, levels = cfg.fault, cfg.eval.trials, rates(cfg)
    device = resolve_device(cfg.device)
    model, data, ckpt = load_trained(checkpoint, device, cfg.data.root, expect)
    saved = ckpt["config"]
    batch_size, limit = cfg.eval.batch_size, cfg.eval.limit
    results = []
    with FaultInjector(model, fault, seed=cfg.eval.fault_seed) as injector:
        if fault.target != "activations" and injector.exposed_weight_bits() == 0:
            raise QfiError("no weight bits are exposed to faults (check fault.layers and fault.bits)")
        with frozen_weights(model) if fault.persistence == "trial" else nullcontext():
            with injector.disabled():
                clean_correct, _ = predict_correct(model, data, batch_size, limit)
            with reporter.task("inject-eval", total=trials * len(levels)) as advance:
                for ber, count in levels:
                    accuracies, rerrs, flips, nan_trials, nonfinite = [], [], [], 0, 0
                    for t in range(trials):
                        with injector.trial(t, ber=ber, count=count):
                            correct, bad = predict_correct(model, data, batch_size, limit)
                        accuracies.append(_fraction(correct))
                        rerrs.append(_fraction(~correct | ~clean_correct))
                        flips.append(injector.flips_total())
                        nan_trials += int(bad > 0)
                        nonfinite += bad
                        rate = f"ber {ber:.3g}" if ber is not None else f"count {count}"
                        advance(1, f"{rate} trial {t + 1}/{trials} acc {accuracies[-1]:.4f} flips {flips[-1]}")
                    mean, std, ci = mean_ci95(accuracies)
                    result = {
                        "ber": ber, "count": count, "trials": trials, "seed": saved.get("seed"),
                        "fault_seed": cfg.eval.fault_seed,
                        "clean_accuracy": _fraction(clean_correct),
                        "accuracy_mean": mean, "accuracy_std": std, "accuracy_ci95": ci,
                        "ci_method": describe_ci(1),
                        "rerr_mean": sum(rerrs) / len(rerrs),
                        "accuracies": accuracies, "rerrs": rerrs, "flips": flips,
                        "bits_total": injector.exposed_weight_bits(), "bits_model": weight_bits_total(model),
                        "nan_trials": nan_trials, "nonfinite_predictions": nonfinite,
                        "fault": fault.as_dict() | {"ber": ber, "count": fault.count if count is None else count},
                        "checkpoint": str(Path(checkpoint).resolve()),
                        "model": model_label(saved["model"]), "dataset": saved["data"]["name"],
                        "recipe": saved.get("recipe"), "wbits": saved["quant"]["wbits"],
                        "quantizer": saved["quant"]["name"], "rho": saved["sam"]["rho"],
                        "train_metrics": ckpt.get("metrics") or {},
                        "samples": int(clean_correct.numel()), "device": str(device),
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                    start = time.perf_counter()
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results

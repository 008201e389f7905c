"""``qfi inject-eval``: accuracy of a trained quantized model under bit errors, over independent trials."""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from qfi_cli.data import InMemoryDataset, load_dataset
from qfi_cli.engine.common import build_quantized_model, predict_correct, resolve_device
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.io import load_checkpoint, write_json
from qfi_cli.progress import Reporter
from qfi_cli.quant import frozen_weights, weight_bits_total
from qfi_cli.stats import t_interval

RESULTS = "results.json"


def mean_ci95(values: list[float]) -> tuple[float, float, list[float] | None]:
    """Mean, sample standard deviation and Student-t 95% confidence interval of the mean (None below 2 values).

    The interval is clipped to [0, 1], the range of an accuracy.

    >>> mean_ci95([0.5, 0.7])[0]
    0.6
    """
    mean, std, low, high = t_interval(values)
    return mean, std, None if low is None else [max(low, 0.0), min(high, 1.0)]


def _fraction(mask: torch.Tensor) -> float:
    """Exact fraction of True entries (a count over a count, not a float32 mean)."""
    return int(mask.sum()) / mask.numel()


@lru_cache(maxsize=4)
def _cached_dataset(name: str, root: str | None, device: str) -> InMemoryDataset:
    return load_dataset(name, root, device)


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def load_trained(checkpoint: str | Path, device: torch.device, data_root: str | None = None,
                 expect: dict[str, Any] | None = None):
    """Rebuild a trained model from its checkpoint; returns (model in eval mode, data set, training config).

    ``expect`` maps dotted config keys (``model.name``, ``quant.wbits``) to the values the caller asked for; a
    checkpoint trained otherwise is refused. Data sets stay cached in the process, so a sweep on the basic
    launcher loads each one once.
    """
    ckpt = load_checkpoint(checkpoint, map_location=device)
    tcfg = ckpt["config"]
    for key, wanted in (expect or {}).items():
        if _select(tcfg, key) != wanted:
            raise QfiError(f"checkpoint {checkpoint} was trained with {key}={_select(tcfg, key)}, not {wanted}: "
                           "pass a matching --checkpoint (or sweep with --train)")
    try:
        root = data_root if data_root is not None else tcfg["data"].get("root")
        data = _cached_dataset(tcfg["data"]["name"], root, str(device))
        model = build_quantized_model(tcfg, data).to(device)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QfiError(f"checkpoint {checkpoint} does not match its model config: {first}") from None
    return model.eval(), data, tcfg


def check_eval_settings(cfg: dict[str, Any]) -> tuple[FaultConfig, int]:
    """The validated fault config and trial count (one-line QfiError on a mistake)."""
    trials = int(cfg["eval"]["trials"])
    if trials < 1:
        raise QfiError(f"trials must be >= 1, got {trials}")
    return FaultConfig.from_dict(cfg["fault"]), trials


def inject_eval(cfg: dict[str, Any], out_dir: str | Path | None, checkpoint: str | Path,
                reporter: Reporter | None = None, expect: dict[str, Any] | None = None,
                point: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` under ``cfg['fault']`` for ``cfg['eval']['trials']`` trials; write results.json.

    Each trial quantizes and injects once (persistence ``trial``) and reuses the faulty weights for every
    batch. Trial t's pattern depends only on (seed, t, ber, layer), so two models or two rates are compared on
    nested, identical faults.
    """
    reporter = reporter or Reporter()
    start = time.perf_counter()
    fault, trials = check_eval_settings(cfg)
    device = resolve_device(cfg["device"])
    model, data, tcfg = load_trained(checkpoint, device, cfg["data"].get("root") if cfg.get("data") else None,
                                     expect)
    batch_size, limit = int(cfg["eval"]["batch_size"]), cfg["eval"].get("limit")
    seed = int(cfg["seed"])

    with FaultInjector(model, fault, seed=seed) as injector:
        with injector.disabled(), frozen_weights(model):
            clean_correct, _ = predict_correct(model, data, batch_size, limit)
        accuracies, rerrs, flips, nan_trials, nonfinite = [], [], [], 0, 0
        # Weight faults of a trial are fixed (persistence trial): quantize and inject once, reuse for every batch.
        # Activation faults are drawn per forward either way.
        once = frozen_weights if fault.persistence == "trial" else lambda _: nullcontext()
        with reporter.task("inject-eval", total=trials) as advance:
            for t in range(trials):
                injector.set_trial(t)
                with once(model):
                    correct, bad = predict_correct(model, data, batch_size, limit)
                accuracies.append(_fraction(correct))
                rerrs.append(_fraction(~correct | ~clean_correct))
                flips.append(injector.flips_total())
                nan_trials += int(bad > 0)
                nonfinite += bad
                advance(1, f"acc {accuracies[-1]:.4f} flips {flips[-1]}")
        bits_total = injector.exposed_weight_bits()

    mean, std, ci = mean_ci95(accuracies)
    results = {
        "ber": fault.ber, "trials": trials, "seed": seed,
        "clean_accuracy": _fraction(clean_correct),
        "accuracy_mean": mean, "accuracy_std": std, "accuracy_ci95": ci,
        "rerr_mean": sum(rerrs) / len(rerrs),
        "accuracies": accuracies, "flips": flips, "bits_total": bits_total,
        "bits_model": weight_bits_total(model), "nan_trials": nan_trials, "nonfinite_predictions": nonfinite,
        "fault": fault.as_dict(), "checkpoint": str(Path(checkpoint).resolve()),
        "model": tcfg["model"]["name"], "dataset": tcfg["data"]["name"],
        "wbits": tcfg["quant"]["wbits"], "rho": tcfg["sam"]["rho"],
        "samples": int(clean_correct.numel()), "device": str(device),
        "seconds": round(time.perf_counter() - start, 3), "status": "ok", "point": point or {},
    }
    if out_dir is not None:
        write_json(Path(out_dir) / RESULTS, results)
    return results

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from qfi_cli.config import DataConfig, RunConfig
from qfi_cli.data import InMemoryDataset
from qfi_cli.engine.common import (build_float_model, build_quantized_model, load_data, predict_correct,
                                   resolve_device)
from qfi_cli.engine.prefix import PrefixReuse, writes_in_place
from qfi_cli.errors import QfiError, first_line
from qfi_cli.faults import FaultInjector
from qfi_cli.io import load_checkpoint
from qfi_cli.models import model_label
from qfi_cli.progress import Reporter
from qfi_cli.quant import AO_QUANTIZER, frozen_weights, is_torch_ao, stored_record, weight_bits_total
from qfi_cli.stats import METHOD, SEQUENTIAL_METHOD, PrecisionRule, describe_ci, mean_ci
from qfi_cli.user_code import TARGET, Trust


def mean_ci95(values: list[float], sequential: bool = False) -> tuple[float, float, list[float] | None]:
    """Mean, sample standard deviation and 95% interval of the mean of values in [0, 1] (None below 2 values).

    The interval (``qfi_cli.stats.mean_ci``: betting, valid for any distribution on [0, 1]) covers the fault
    patterns (trials) of one model. Trial accuracies are skewed (most near clean, a rare collapse), so it reaches
    down as far as the [0, 1] bound forces when the trials are few. ``sequential``: the number of values was
    chosen by looking at them (``eval.precision``): the confidence sequence's interval.

    >>> mean, std, ci = mean_ci95([0.5, 0.7])
    >>> round(mean, 12), round(std, 6), [round(v, 3) for v in ci]  # two values: little more than the bound
    (0.6, 0.141421, [0.046, 0.98])
    """
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    low, high = mean_ci(values, sequential=sequential)
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
                 expect: dict[str, Any] | None = None, trust: Trust | None = None,
                 ) -> tuple[torch.nn.Module, InMemoryDataset, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint; returns (model in eval mode, data set, checkpoint contents).

    ``expect`` maps dotted config keys (``model.name``, ``quant.wbits``) to the values the caller asked for; a
    checkpoint trained otherwise is refused. A checkpoint of your own model or data (``_target_``) needs ``trust``
    that covers it: ``Trust({"model._target_": "mypkg.nets.MyNet"})`` or ``Trust(code=True)``. Data sets stay
    cached in the process, so a sweep on the basic launcher loads each one once.
    """
    ckpt = load_checkpoint(checkpoint, map_location=device, trust=trust)
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


@lru_cache(maxsize=2)
def _torch_ao_built(model_spec: str, data_spec: str, root: str | None) -> torch.nn.Module | None:
    cfg = RunConfig.from_dict({"model": json.loads(model_spec), "data": json.loads(data_spec)})
    model = build_float_model(cfg, _cached_dataset(data_spec, root, "cpu"), init=False)
    return model.eval() if is_torch_ao(model) else None


def torch_ao_model(cfg: RunConfig) -> torch.nn.Module | None:
    """The torch.ao int8 model that ``cfg.model._target_`` returns (built once per process, on the CPU: torch.ao
    kernels are CPU kernels), or None when ``cfg.model`` builds anything else. Trials restore it bit for bit, so
    the points of a sweep share it."""
    if TARGET not in cfg.model:
        return None
    if str(cfg.device).startswith("cuda"):
        raise QfiError("a torch.ao int8 model runs on the CPU: use device=cpu or device=auto")
    if cfg.model.get("init") is not None:  # build_float_model's message
        build_float_model(cfg, _cached_dataset(json.dumps(cfg.data.as_dict(), sort_keys=True), cfg.data.root, "cpu"))
    return _torch_ao_built(json.dumps(cfg.model, sort_keys=True), json.dumps(cfg.data.as_dict(), sort_keys=True),
                           cfg.data.root)


def load_torch_ao(cfg: RunConfig) -> tuple[torch.nn.Module, InMemoryDataset, dict[str, Any]]:
    """``load_trained``'s answer for a torch.ao int8 model (no checkpoint): its own config, quantizer ``torch.ao``."""
    model = torch_ao_model(cfg)
    if model is None:
        raise QfiError(f"model {model_label(cfg.model)} is not a torch.ao int8 model: pass a --checkpoint that "
                       "qfi train wrote")
    plain = cfg.as_dict()
    plain["quant"] = plain["quant"] | {"name": AO_QUANTIZER, "wbits": 8}
    data = _cached_dataset(json.dumps(cfg.data.as_dict(), sort_keys=True), cfg.data.root, "cpu")
    return model, data, {"config": plain, "metrics": {}}


def rates(cfg: RunConfig) -> list[tuple[float | None, int | None]]:
    """The (ber, count) levels one job evaluates, ascending, as the fault source says (``FaultSource.levels``):
    ``eval.bers`` or ``fault.ber`` at a rate; ``fault.count`` for ``bitflip_count``; for ``replay`` the file's
    rates (those ``eval.bers`` / ``fault.ber`` pick); one level without a rate for ``profile``.

    >>> rates(RunConfig.from_dict({"eval": {"bers": [0.01, 0.001]}}))
    [(0.001, None), (0.01, None)]
    """
    return cfg.fault.source.levels(cfg)


@dataclass
class TrialStats:
    """Per-trial outcomes of one fault setting: accuracy, robust error, changed bits; NaN/Inf counts; the
    forwards over the test set they took (a trial that changed no stored bit takes none); ``sequential``: the
    trial count was chosen adaptively (``eval.precision``), so the intervals are the confidence sequence's."""

    accuracies: list[float] = field(default_factory=list)
    rerrs: list[float] = field(default_factory=list)
    flips: list[int] = field(default_factory=list)
    flips_by_part: dict[str, list[int]] = field(default_factory=dict)
    nan_trials: int = 0
    nonfinite: int = 0
    forwards: int = 0
    sequential: bool = False

    def summary(self) -> dict[str, Any]:
        """Means and 95% intervals (over trials; ``mean_ci``) of accuracy and RErr.

        >>> s = TrialStats([0.98] * 10, [0.02] * 10, [1] * 10).summary()  # RErr = 1 - accuracy: mirrored intervals
        >>> [round(v, 3) for v in s["accuracy_ci95"]], [round(v, 3) for v in s["rerr_ci95"]]
        ([0.667, 0.987], [0.013, 0.333])
        """
        mean, std, ci = mean_ci95(self.accuracies, self.sequential)
        rerr, _, rerr_ci = mean_ci95(self.rerrs, self.sequential)
        return {"accuracy_mean": mean, "accuracy_std": std, "accuracy_ci95": ci, "rerr_mean": rerr,
                "rerr_ci95": rerr_ci, "flips_mean": sum(self.flips) / len(self.flips)}


def run_trials(model: torch.nn.Module, data: InMemoryDataset, injector: FaultInjector, trials: Iterable[int],
               clean: tuple[torch.Tensor, int], batch_size: int, limit: int | None = None, ber: float | None = None,
               count: int | None = None, before: Callable[[int], None] | None = None,
               advance: Callable[[int, str], None] | None = None, label: str = "",
               stop: PrecisionRule | None = None, reuse: PrefixReuse | None = None) -> TrialStats:
    """Evaluate ``model`` under the injector's trial ``t`` for each ``t`` in ``trials`` (at ``ber`` / ``count``).

    ``clean`` is ``predict_correct``'s answer without faults (RErr counts a sample wrong under faults or wrong
    when clean); a trial whose faults changed no stored bit of the frozen weights is the clean model, so it is
    not evaluated again. ``before(t)`` runs before each trial, ``advance(1, status)`` after it (and once with the
    trials left out when ``stop`` ends the run early: its rule is asked after each trial). ``reuse``: forwards
    recompute only what the faulty layers feed (``qfi_cli.engine.prefix``; the same results bit for bit).
    """
    stats = TrialStats(sequential=stop is not None)
    trials = list(trials)
    clean_correct = clean[0]
    in_place = writes_in_place(injector)
    predict = reuse.for_injector(injector, data, batch_size, limit) if reuse is not None else None
    predict = predict or (lambda: predict_correct(model, data, batch_size, limit))
    for t in trials:
        if before is not None:
            before(t)
        with injector.trial(t, ber=ber, count=count):
            unchanged = in_place and injector.flips_total() == 0
            correct, bad = clean if unchanged else predict()
        stats.forwards += int(not unchanged)
        stats.accuracies.append(_fraction(correct))
        stats.rerrs.append(_fraction(~correct | ~clean_correct))
        stats.flips.append(injector.flips_total())
        for part, n in injector.flips_by_part().items():
            stats.flips_by_part.setdefault(part, []).append(n)
        stats.nan_trials += int(bad > 0)
        stats.nonfinite += bad
        if advance is not None:
            rate = f"ber {ber:.3g}" if ber is not None else f"count {count}" if count is not None else "profile"
            advance(1, f"{label}{rate} trial {t + 1}/{len(trials)} acc {stats.accuracies[-1]:.4f} "
                       f"flips {stats.flips[-1]}")
        if stop is not None and stop.done(stats.accuracies):
            if advance is not None and len(stats.accuracies) < len(trials):
                advance(len(trials) - len(stats.accuracies), f"{label}precision reached after "
                                                             f"{len(stats.accuracies)} trials")
            break
    return stats


def stopping_record(cfg: RunConfig, stats: TrialStats) -> dict[str, Any]:
    """How a rate's trial count was decided: ``precision`` (null: a fixed ``eval.trials``), ``min_trials`` /
    ``max_trials`` and ``stopped`` ("trials", "precision": the interval reached +-precision, "max_trials": the cap
    came first).

    >>> cfg = RunConfig.from_dict({"eval": {"precision": 0.05, "max_trials": 20}})
    >>> stopping_record(cfg, TrialStats([0.9] * 20, sequential=True))["stopped"]
    'max_trials'
    """
    rule = cfg.eval.stopping()
    if rule is None or not stats.sequential:
        return {"precision": None, "stopped": "trials"}
    return {"precision": rule.precision, "min_trials": rule.min_trials, "max_trials": rule.max_trials,
            "stopped": "precision" if rule.precise(stats.accuracies) else "max_trials"}


def result_record(cfg: RunConfig, stats: TrialStats, injector: FaultInjector, model: torch.nn.Module,
                  ckpt: dict[str, Any], checkpoint: str | Path, clean_correct: torch.Tensor, ber: float | None,
                  count: int | None, fault_seed: int, device: torch.device, seconds: float) -> dict[str, Any]:
    """The results.json record of one rate (what ``inject_eval`` returns per rate)."""
    saved, fault = ckpt["config"], cfg.fault
    summary = stats.summary()
    return {
        "ber": injector.source.shown_ber(ber), "count": count, "trials": len(stats.accuracies), "seed": saved.get("seed"),
        "fault_seed": fault_seed,
        "clean_accuracy": _fraction(clean_correct),
        "accuracy_mean": summary["accuracy_mean"], "accuracy_std": summary["accuracy_std"],
        "accuracy_ci95": summary["accuracy_ci95"], "ci_method": SEQUENTIAL_METHOD if stats.sequential else METHOD,
        "ci_covers": describe_ci(1, sequential=stats.sequential), "rerr_mean": summary["rerr_mean"],
        "rerr_ci95": summary["rerr_ci95"], "forwards": stats.forwards, **stopping_record(cfg, stats),
        "accuracies": stats.accuracies, "rerrs": stats.rerrs, "flips": stats.flips,
        "bits_total": injector.exposed_bits(), "bits_by_part": injector.exposed_bits_by_part(),
        "flips_by_part": stats.flips_by_part, "bits_model": weight_bits_total(model),
        **stored_record(model, saved["quant"]["wbits"]),
        "nan_trials": stats.nan_trials, "nonfinite_predictions": stats.nonfinite,
        "fault": fault.as_dict() | {"ber": ber, "count": fault.count if count is None else count},
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "model": model_label(saved["model"]), "dataset": saved["data"]["name"],
        "recipe": saved.get("recipe"), "wbits": saved["quant"]["wbits"],
        "quantizer": saved["quant"]["name"],
        "rho": None if saved["quant"]["name"] == AO_QUANTIZER else saved["sam"]["rho"],  # qfi did not train it
        "train_metrics": ckpt.get("metrics") or {},
        "samples": int(clean_correct.numel()), "device": str(device),
        "seconds": round(seconds, 3),
    }


def inject_eval(cfg: RunConfig | dict[str, Any], checkpoint: str | Path | None, reporter: Reporter | None = None,
                expect: dict[str, Any] | None = None,
                on_result: Callable[[dict[str, Any]], None] | None = None,
                save_faults: str | Path | None = None) -> list[dict[str, Any]]:
    """Evaluate ``checkpoint`` under ``cfg.fault`` for ``cfg.eval.trials`` trials at each rate; one result per rate.

    Weight faults of a trial are fixed (persistence ``trial``): the model is quantized once, each trial's faults are
    written into the frozen weights and undone afterwards. Trial t's pattern depends only on (fault seed, t, rate,
    layer), so two models or two rates are compared on nested, identical faults. ``on_result`` receives each
    rate's result as soon as it is complete (a sweep writes it then: an interrupted job keeps finished rates).
    ``save_faults``: write every trial's faulty bits there (``qfi_cli.faults.replay``; ``fault=replay`` applies
    them again; its trials are the file's). ``checkpoint`` None: the torch.ao int8 model ``model._target_``
    returns (``torch_ao_model``). Example::

        [res] = inject_eval(cfg, "runs/w4/model.pt")   # res["accuracy_mean"], res["accuracies"], ...
    """
    cfg = RunConfig.from_dict(cfg)
    reporter = reporter or Reporter()
    start = time.perf_counter()
    cfg.fault.check_run(cfg, "inject_eval")  # the pre-check's rules, for a config made for another command
    if save_faults is not None:
        cfg.fault.check_recordable()
    fault, trials, levels, fault_seed = cfg.fault, cfg.eval.most_trials(), rates(cfg), cfg.eval.fault_seed
    if checkpoint is None:  # a torch.ao int8 model, as its _target_ returns it
        device = torch.device("cpu")
        model, data, ckpt = load_torch_ao(cfg)
    else:
        device = resolve_device(cfg.device)
        model, data, ckpt = load_trained(checkpoint, device, cfg.data.root, expect, cfg.trust())
    batch_size, limit = cfg.eval.batch_size, cfg.eval.limit
    results = []
    with FaultInjector(model, fault, seed=fault_seed) as injector:
        if fault.parts and injector.exposed_bits() == 0:
            raise QfiError(f"no stored bits of {', '.join(fault.parts)} are exposed to faults (check fault.target, "
                           "fault.layers, fault.bits and fault.protect)")
        trials, fault_seed = injector.source.plan(trials, fault_seed)  # a replay: the file's
        recorder = None
        if save_faults is not None:
            from qfi_cli.faults.replay import FaultRecorder

            recorder = FaultRecorder(model, levels, trials, fault_seed=fault_seed, fault=fault.as_dict(),
                                     checkpoint=None if checkpoint is None else str(Path(checkpoint).resolve()),
                                     model_name=model_label(ckpt["config"]["model"]))
            injector.recorder = recorder.add
        with frozen_weights(model) if fault.persistence == "trial" else nullcontext():
            reuse = PrefixReuse.build(model) if cfg.eval.prefix_reuse else None
            with injector.disabled():
                clean = predict_correct(model, data, batch_size, limit)
            clean_correct = clean[0]
            with reporter.task("inject-eval", total=trials * len(levels)) as advance:
                for i, (ber, count) in enumerate(levels):
                    stats = run_trials(model, data, injector, range(trials), clean, batch_size, limit, ber,
                                       count, before=None if recorder is None else lambda t: recorder.begin(i, t),
                                       advance=advance, stop=cfg.eval.stopping(), reuse=reuse)
                    result = result_record(cfg, stats, injector, model, ckpt, checkpoint, clean_correct, ber, count,
                                           fault_seed, device, time.perf_counter() - start)
                    if save_faults is not None and i == len(levels) - 1:
                        result["faults_file"] = str(recorder.save(save_faults).resolve())
                    start = time.perf_counter()
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results

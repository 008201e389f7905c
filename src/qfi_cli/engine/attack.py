"""``qfi attack``: the worst case beside the random one. How many chosen bit flips take a model to chance?

The progressive bit search (Rakin et al., ICCV 2019; ``qfi_cli.faults.search.BitSearch``) flips one stored weight
bit per iteration on an attack batch drawn from the TRAINING split (the attacker's data; its labels are the clean
model's own predictions, as in the paper's code); after each committed flip the accuracy is measured on the TEST
split, until it reaches ``attack.target_accuracy`` (default chance + 1 point) or ``attack.flips`` flips. The random
baseline is the accuracy under the same numbers of random flips (``fault=count``: nested patterns,
``attack.random_trials`` trials, fault seed ``eval.fault_seed``), so both curves are on the same codes and counts.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from qfi_cli.config import RunConfig
from qfi_cli.data import InMemoryDataset
from qfi_cli.engine.common import predict_correct, resolve_device
from qfi_cli.engine.evaluate import load_trained, mean_ci95
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.faults.search import BitSearch
from qfi_cli.progress import Reporter
from qfi_cli.quant import frozen_weights, quantized_layers, stored_record, weight_bits_total
from qfi_cli.stats import METHOD, describe_ci

DENSE_COUNTS = 32  # up to this many flips the random baseline is measured at every count


def baseline_counts(n: int, dense: int = DENSE_COUNTS, points: int = 24) -> list[int]:
    """The flip counts at which the random baseline is measured for an attack of ``n`` flips: every count up to
    ``dense``, beyond that 1..10 and about ``points`` log-spaced counts up to ``n`` (always ``n`` itself).

    >>> baseline_counts(5), baseline_counts(0)
    ([1, 2, 3, 4, 5], [])
    >>> c = baseline_counts(1000); c[:11], c[-1], len(c) <= 10 + 24
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], 1000, True)
    """
    if n <= dense:
        return list(range(1, n + 1))
    ratio = (n / 10) ** (1 / points)
    return sorted(set(range(1, 11)) | {round(10 * ratio ** j) for j in range(1, points + 1)} | {n})


def chance_target(num_classes: int) -> float:
    """The default target accuracy: chance plus one point.

    >>> chance_target(10)
    0.11
    """
    return round(1.0 / num_classes + 0.01, 12)


def attack_batch(data: InMemoryDataset, size: int, seed: int) -> torch.Tensor:
    """``size`` training images chosen by ``seed`` (a seeded permutation of the training split)."""
    generator = torch.Generator(device=data.device).manual_seed(seed)
    x, _ = next(data.batches("train", size, shuffle=True, generator=generator))
    return x


def _accuracy(model: torch.nn.Module, data: InMemoryDataset, batch_size: int, limit: int | None) -> float:
    correct, _ = predict_correct(model, data, batch_size, limit)
    return int(correct.sum()) / correct.numel()


def random_baseline(model: torch.nn.Module, counts: list[int], trials: int, fault_seed: int,
                    evaluate: Any) -> dict[str, Any]:
    """Accuracy (``evaluate()``) under exactly c random weight bit flips for each count c, ``trials`` trials each
    (``fault=count``: trial t's flips at a lower count are a subset of those at a higher one). Call inside
    ``frozen_weights(model)``."""
    per_count: list[list[float]] = [[] for _ in counts]
    with FaultInjector(model, FaultConfig(model="bitflip_count", ber=None, count=0), seed=fault_seed) as injector:
        for t in range(trials):
            for i, c in enumerate(counts):
                with injector.trial(t, count=c):
                    per_count[i].append(evaluate())
    stats = [mean_ci95(a) for a in per_count]
    return {"counts": counts, "trials": trials, "fault_seed": fault_seed,
            "accuracy_mean": [s[0] for s in stats], "accuracy_std": [s[1] for s in stats],
            "accuracy_ci95": [s[2] for s in stats], "ci_method": METHOD, "ci_covers": describe_ci(1),
            "accuracies": per_count}


def random_at(random: dict[str, Any], count: int | None) -> dict[str, Any] | None:
    """The random baseline's mean, CI and trials at ``count`` flips (None when it was not measured there)."""
    if count is None or count not in random.get("counts", []):
        return None
    i = random["counts"].index(count)
    return {"flips": count, "accuracy_mean": random["accuracy_mean"][i], "accuracy_ci95": random["accuracy_ci95"][i]}


def _search_flips(search: BitSearch, evaluate: Any, target: float, max_flips: int, reached: bool,
                  reporter: Reporter) -> tuple[list[dict[str, Any]], int | None, float]:
    """Commit bit-search flips until accuracy (``evaluate()``) is at or below ``target`` or ``max_flips`` are made
    (none when ``reached`` already); return ``(flips, flips_to_target, search_seconds)``."""
    flips: list[dict[str, Any]] = []
    flips_to_target = 0 if reached else None
    search_start = time.perf_counter()
    with reporter.task("attack", total=max_flips) as advance:
        while flips_to_target is None and len(flips) < max_flips:
            flip = search.step()
            if flip is None:
                break
            accuracy = evaluate()
            flips.append({"flip": len(flips) + 1, **flip.as_dict(), "accuracy": accuracy})
            if accuracy <= target:
                flips_to_target = len(flips)
            advance(1, f"flip {len(flips)}: {flip.layer}[{flip.index}] bit {flip.bit} loss {flip.loss:.3f} "
                       f"acc {accuracy:.4f}")
    return flips, flips_to_target, time.perf_counter() - search_start


def _check_restored(model: torch.nn.Module, clean: list[torch.Tensor]) -> None:
    """Raise if the quantized layers' frozen weights differ from ``clean`` (the search must undo every flip)."""
    if not all(torch.equal(a, m.frozen_weight) for a, (_, m) in zip(clean, quantized_layers(model))):
        raise RuntimeError("the bit search did not restore the weights it flipped")  # a bug, not a user mistake


def _provenance(checkpoint: str | Path, ckpt: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """attack.json's record of the attacked checkpoint: its path, model, data, quantization, seed, metrics, device."""
    saved = ckpt["config"]
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "model": saved["model"]["name"], "dataset": saved["data"]["name"], "recipe": saved.get("recipe"),
        "wbits": saved["quant"]["wbits"], "quantizer": saved["quant"]["name"], "rho": saved["sam"]["rho"],
        "seed": saved.get("seed"), "train_metrics": ckpt.get("metrics") or {}, "device": str(device),
    }


def attack(cfg: RunConfig | dict[str, Any], checkpoint: str | Path, reporter: Reporter | None = None,
           expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the progressive bit search on ``checkpoint`` with ``cfg.attack``; return attack.json's content.

    ``flips`` holds one entry per committed flip (layer, code index, bit, old/new code and value, attack-batch
    loss, test accuracy after it); ``flips_to_target`` is the first count at or below the target (null if never
    reached; 0 when the clean model is already there); ``random`` the baseline at the same counts. The model is
    left as it was: every flip is undone. Example::

        res = attack(cfg, "runs/w8/model.pt")   # res["flips_to_target"], res["random"]["accuracy_mean"], ...
    """
    cfg = RunConfig.from_dict(cfg)
    acfg = cfg.attack
    reporter = reporter or Reporter()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    model, data, ckpt = load_trained(checkpoint, device, cfg.data.root, expect, cfg.trust())
    saved = ckpt["config"]
    target = acfg.target_accuracy if acfg.target_accuracy is not None else chance_target(data.num_classes)
    batch_size, limit = cfg.eval.batch_size, cfg.eval.limit

    def evaluate() -> float:
        return _accuracy(model, data, batch_size, limit)

    x = attack_batch(data, acfg.batch, acfg.seed)
    with frozen_weights(model):
        clean = [m.frozen_weight.clone() for _, m in quantized_layers(model)]
        clean_accuracy = evaluate()
        with torch.no_grad():
            y = model(x).argmax(1)  # the clean model's predictions: no label leaking (as in the paper's code)
        search = BitSearch(model, x, y, acfg.k_top, acfg.rank_top)
        clean_loss = search.loss()
        flips, flips_to_target, search_seconds = _search_flips(search, evaluate, target, acfg.flips,
                                                               clean_accuracy <= target, reporter)
        search.restore()
        _check_restored(model, clean)
        with reporter.task("random baseline", total=1) as advance:
            random = random_baseline(model, baseline_counts(len(flips)), acfg.random_trials,
                                     cfg.eval.fault_seed, evaluate)
            advance(1, "")
    n = len(flips)
    return {
        "flips": flips, "flips_committed": n, "flips_to_target": flips_to_target,
        "target_accuracy": target, "clean_accuracy": clean_accuracy, "clean_loss": clean_loss,
        "final_accuracy": flips[-1]["accuracy"] if flips else clean_accuracy,
        "random": random, "random_at_final": random_at(random, n),
        "random_at_target": random_at(random, flips_to_target),
        "attack": dataclasses.asdict(acfg), "fault_seed": cfg.eval.fault_seed,
        "attack_samples": int(x.shape[0]), "attack_split": "train", "accuracy_split": "test",
        "labels": "clean model's predictions", "samples": _samples(data, limit), "limit": limit,
        "seconds_per_flip": search_seconds / n if n else None, "search_seconds": round(search_seconds, 3),
        "bits_model": weight_bits_total(model), **stored_record(model, saved["quant"]["wbits"]),
        **_provenance(checkpoint, ckpt, device),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _samples(data: InMemoryDataset, limit: int | None) -> int:
    n = data.size("test")
    return n if limit is None else min(n, limit)


__all__ = ["attack", "attack_batch", "baseline_counts", "chance_target", "random_at", "random_baseline"]

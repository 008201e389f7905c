"""Item 8: ``qfi attack`` and adversarial bit error training on digits_cnn (digits, 8-bit LSQ, ``qfi train``'s
defaults but 4 epochs).

- seconds per flip of the progressive bit search: one ``BitSearch.step()`` (gradient on the 128-sample attack batch,
  each layer's ``k_top`` = 5 candidates evaluated, the best committed) plus the test accuracy after it, as
  ``qfi attack`` does per flip; the median over the repeats (an absolute time: target at most 0.5 s);
- the cost of bit error training: seconds per training epoch of the ``advbet`` and ``randbet`` recipes against
  ``normal``, each from whole ``train()`` runs of 3 epochs minus a run of 0 epochs (calibration, test and
  sharpness: the fixed costs), timed side by side; ``train.bet.start_loss`` is raised so that the faulty term is on
  from the first step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import _bench_common as bc
from qfi_cli.config import RunConfig
from qfi_cli.engine.attack import attack_batch
from qfi_cli.engine.common import predict_correct
from qfi_cli.engine.evaluate import load_trained
from qfi_cli.engine.train import train
from qfi_cli.faults.search import BitSearch
from qfi_cli.quant import frozen_weights

SECONDS_PER_FLIP = 0.5
K_TOP, BATCH = 5, 128
RECIPES = {  # the recipe files' settings (conf/recipe; none uses SAM), as RunConfig sections
    "normal": {},
    "randbet": {"quant": {"name": "rquant"},
                "train": {"clip_weights": 0.1, "bet": {"mode": "random", "ber": 0.01, "start_loss": 100.0}}},
    "advbet": {"quant": {"name": "rquant"},
               "train": {"clip_weights": 0.1, "bet": {"mode": "adversarial", "adv_flips": 10, "adv_steps": 1,
                                                      "start_loss": 100.0}}},
}


def config(recipe: str, epochs: int) -> RunConfig:
    extra = RECIPES[recipe]
    return RunConfig.from_dict({"device": "cpu", "recipe": recipe, "sam": {"rho": 0.0}, **extra,
                                "train": {**extra.get("train", {}), "epochs": epochs}})


def seconds_per_flip(checkpoint: Path, repeats: int) -> list[float]:
    model, data, _ = load_trained(checkpoint, torch.device("cpu"))
    x = attack_batch(data, BATCH, 0)
    times = []
    with frozen_weights(model):
        y = model(x).argmax(1)
        search = BitSearch(model, x, y, K_TOP)
        search.step()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            search.step()
            predict_correct(model, data, 1000)
            times.append(time.perf_counter() - start)
        search.restore()
    return times


def main() -> None:
    bc.setup()
    print("bench 8: attack and adversarial bit error training")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train(RunConfig.from_dict({"device": "cpu", "train": {"epochs": 4}}), root / "model")
        flips = seconds_per_flip(root / "model" / "model.pt", bc.REPEATS)
        runs = {f"{r}_{e}": (lambda r=r, e=e: train(config(r, e), root / f"{r}_{e}_{time.perf_counter_ns()}"))
                for r in RECIPES for e in (3, 0)}
        times = bc.paired(runs, warmup=0)
    epoch = {r: [(a - b) / 3 for a, b in zip(times[f"{r}_3"], times[f"{r}_0"])] for r in RECIPES}
    per_flip = statistics.median(flips)
    ratios = {r: statistics.median(a / b for a, b in zip(epoch[r], epoch["normal"])) for r in ("advbet", "randbet")}
    rows = [bc.row(f"8. attack: seconds per flip, digits_cnn 8-bit (k_top {K_TOP}, batch {BATCH})", per_flip,
                   f"≤ {SECONDS_PER_FLIP:g} s", per_flip <= SECONDS_PER_FLIP, shown=f"{per_flip:.3f} s"),
            bc.row("8. AdvBET epoch vs normal epoch, digits_cnn (10 adversarial flips, 1 search round)",
                   ratios["advbet"], "—", None),
            bc.row("8. RandBET epoch vs normal epoch, digits_cnn (p = 1%)", ratios["randbet"], "—", None)]
    details = {"seconds_per_flip": [round(t, 4) for t in flips],
               "seconds_per_epoch": {r: float(f"{statistics.median(v):.4g}") for r, v in epoch.items()},
               "run_seconds": bc.medians(times)}
    notes = [f"Attack: one progressive-bit-search iteration on digits_cnn (4 quantized layers, 8-bit, {BATCH}-sample "
             f"attack batch): a forward/backward for the gradient, {K_TOP} candidates per layer evaluated exactly "
             f"({4 * K_TOP} forwards of the attack batch), then the test accuracy (450 images); "
             f"{per_flip:.3f} s per flip, {min(flips):.3f}-{max(flips):.3f} s over the repeats. Bit error training: "
             f"seconds per epoch (median) normal {details['seconds_per_epoch']['normal']:.2f}, randbet "
             f"{details['seconds_per_epoch']['randbet']:.2f}, advbet {details['seconds_per_epoch']['advbet']:.2f}: "
             "AdvBET's step adds one forward/backward for the search and one faulty forward/backward, RandBET's "
             "only the faulty pass."]
    bc.record("8_attack", "attack and adversarial bit error training", rows, details, notes)


if __name__ == "__main__":
    main()

"""Adaptive trials (``eval.precision``): the confidence sequence keeps its coverage under the stopping rule, the rule
stops where it says, and inject-eval / sensitivity / sweep runs record ``forwards``, ``precision`` and ``stopped``,
resume only with the same rule, and are a prefix of the fixed-trials run on the same fault patterns."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from qfi_cli.config import EvalConfig, RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.stats import SEQUENTIAL_METHOD, PrecisionRule, mean_ci
from tests.helpers import CLI_TINY, compose, qfi
from tests.test_stats import REPETITIONS, TARGET, population

# ------------------------------------------------------------------------------------- coverage under stopping

RULES = {"1e-4": PrecisionRule(0.02, 10, 2000), "1e-3": PrecisionRule(0.05, 10, 2000),
         "1e-2": PrecisionRule(0.01, 10, 2000)}  # about 100-400 trials each on these shapes


def adaptive_run(pop: np.ndarray, rule: PrecisionRule, rng: np.random.Generator) -> tuple[float, float, int]:
    """One adaptive run on trials drawn from ``pop`` (without replacement): its interval and trial count."""
    order = pop[rng.permutation(len(pop))[:rule.max_trials]]
    n = next(n for n in range(1, rule.max_trials + 1) if rule.done(order[:n]))
    low, high = mean_ci(order[:n], level=rule.level, sequential=True)
    return low, high, n


@pytest.mark.parametrize("shape", ["1e-4", "1e-3", "1e-2"])
def test_the_confidence_sequence_covers_at_the_adaptive_stop(shape: str) -> None:
    """400 adaptive runs per shape (the same tolerance as tests/test_stats.py: Binomial(400, >= 0.95), 94% is
    0.9 sd below 95%): the share whose interval at the stop holds the population mean is >= 94%, and every run
    stopped because its interval was narrow enough (the cap is far)."""
    pop, rule = population(shape), RULES[shape]
    rng = np.random.default_rng([7, len(shape)])
    runs = np.array([adaptive_run(pop, rule, rng) for _ in range(REPETITIONS)])
    reference = float(pop.mean())
    covered = float(np.mean((runs[:, 0] <= reference) & (reference <= runs[:, 1])))
    assert covered >= TARGET, (shape, covered)
    assert (runs[:, 1] - runs[:, 0] <= 2 * rule.precision).all() and (runs[:, 2] < rule.max_trials).all()
    assert (runs[:, 2] >= rule.min_trials).all()


def test_a_fixed_n_interval_rechecked_after_every_trial_is_not_what_the_rule_uses() -> None:
    """The sequence's interval is wider than the fixed-n interval only where it must be: at the same n its width is
    within a factor 1.5 of the fixed-n one on every shape (measured 0.9-1.3), and never narrower than half."""
    for shape in ("1e-4", "1e-3", "1e-2"):
        x = population(shape)[:400]
        fixed, seq = mean_ci(x), mean_ci(x, sequential=True)
        ratio = (seq[1] - seq[0]) / (fixed[1] - fixed[0])
        assert 0.5 < ratio < 1.5, (shape, ratio)


# --------------------------------------------------------------------------------------------------- the rule

def test_rule_respects_min_and_max_trials() -> None:
    rule = PrecisionRule(0.4, min_trials=10, max_trials=50)
    assert not any(rule.done([0.5] * n) for n in range(1, 10))  # precise from n = 2, but min_trials first
    assert rule.done([0.5] * 10)
    wide = PrecisionRule(0.001, min_trials=5, max_trials=30)
    values = [0.0, 1.0] * 15
    assert not any(wide.done(values[:n]) for n in range(1, 30)) and wide.done(values)


def test_rule_checks_on_a_schedule_that_never_skips_more_than_5_percent() -> None:
    rule = PrecisionRule(0.01, min_trials=10)
    checks = [n for n in range(1, 20001) if rule.checked_at(n)]
    gaps = np.diff(checks)
    assert checks[0] == 10 and (gaps <= np.ceil(np.array(checks[:-1]) / 20)).all()
    assert len(checks) < 250  # about 46 per tenfold of n


def test_config_rules() -> None:
    assert EvalConfig(precision=0.01).validated().most_trials() == 1000
    for bad, message in [({"precision": 0.0}, "eval.precision must lie in"), ({"precision": 0.5}, "(0, 0.5)"),
                         ({"precision": 0.01, "min_trials": 20, "max_trials": 10}, "min_trials <= max_trials"),
                         ({"min_trials": 1}, "2 <= min_trials"),
                         ({"precision": 0.01, "save_faults": "f.npz"}, "--save-faults needs a fixed eval.trials")]:
        with pytest.raises(QfiError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RunConfig.from_dict(compose([]) | {"eval": compose([])["eval"] | bad})


# ------------------------------------------------------------------------------------------------- the engine

def test_adaptive_inject_eval_is_a_prefix_of_the_fixed_run(trained_digits) -> None:
    from qfi_cli.engine.evaluate import inject_eval

    checkpoint, cfg = trained_digits
    base = {**cfg, "command": "inject_eval", "eval": {**cfg["eval"], "limit": 200}}
    fixed = inject_eval(base | {"eval": base["eval"] | {"trials": 60, "bers": [1e-3, 1e-2]}}, checkpoint)
    adaptive = inject_eval(base | {"eval": base["eval"] | {"bers": [1e-3, 1e-2], "precision": 0.1,
                                                           "min_trials": 5, "max_trials": 60}}, checkpoint)
    for f, a in zip(fixed, adaptive):
        n = a["trials"]
        assert 5 <= n <= 60 and a["accuracies"] == f["accuracies"][:n] and a["flips"] == f["flips"][:n]
        assert a["precision"] == 0.1 and a["min_trials"] == 5 and a["max_trials"] == 60
        assert a["ci_method"] == SEQUENTIAL_METHOD and "confidence sequence" in a["ci_covers"]
        assert a["accuracy_ci95"] == list(mean_ci(a["accuracies"], sequential=True))
        low, high = a["accuracy_ci95"]
        assert a["stopped"] == ("precision" if high - low <= 0.2 else "max_trials")
        assert a["forwards"] == sum(1 for k in a["flips"] if k > 0)  # a trial that flipped nothing: no forward
        assert f["precision"] is None and f["stopped"] == "trials" and f["forwards"] <= 60
    assert adaptive[0]["stopped"] == "precision" and adaptive[0]["trials"] < 60  # p = 0.1%: quickly within +-10


def test_cli_precision_writes_forwards_and_a_sweep_resumes_only_with_the_same_rule(trained_digits, outputs,
                                                                                   capsys) -> None:
    checkpoint, _ = trained_digits
    args = ["--checkpoint", str(checkpoint), "--bers", "1e-3,1e-2", "--precision", "0.1", "eval.min_trials=4",
            "eval.max_trials=40", "eval.limit=200"]
    code, out = qfi(capsys, "inject-eval", *args, "--out", "run")
    assert code == 0, out
    first = json.loads((outputs / "run" / "fault.ber=0.001" / "results.json").read_text())
    assert first["stopped"] in ("precision", "max_trials") and first["forwards"] >= 1
    with open(outputs / "run" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["forwards"]) for r in rows] == [
        json.loads((outputs / "run" / d / "results.json").read_text())["forwards"]
        for d in ("fault.ber=0.001", "fault.ber=0.01")]
    assert all("confidence sequence" in r["ci"] for r in rows)
    code, out = qfi(capsys, "sweep", *args, "--out", "sw")
    assert code == 0, out
    code, out = qfi(capsys, "sweep", *args, "--out", "sw")
    assert code == 0 and "skip 2 finished rate(s)" in out, out
    other = [a if a != "eval.max_trials=40" else "eval.max_trials=41" for a in args]
    code, out = qfi(capsys, "sweep", *other, "--out", "sw")  # another rule would mix rows made differently
    assert code == 2 and "eval.max_trials" in out, out


def test_sensitivity_cells_stop_on_their_own(trained_digits, outputs, capsys) -> None:
    checkpoint, _ = trained_digits
    code, out = qfi(capsys, "sensitivity", "--checkpoint", str(checkpoint), "--precision", "0.2", "--out", "map",
                    "eval.min_trials=3", "eval.max_trials=12", "eval.limit=100", "fault.layers=[fc]", *CLI_TINY[3:])
    assert code == 0, out
    with open(outputs / "map" / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    trials = {int(r["trials"]) for r in rows}
    assert trials <= set(range(3, 13)) and all(int(r["forwards"]) <= int(r["trials"]) for r in rows)
    assert "until the 95% CI is within +-20 points" in out and "confidence sequence" in out

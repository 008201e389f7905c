"""A sweep as a study: configurations (factor values) x bit error rates, training seeds as replicates.

``build_study(rows)`` groups the ok rows of ``collect`` by configuration and BER, aggregates each cell over its
training seeds (mean over seeds of each seed's mean over trials, with ``qfi_cli.stats.two_level_ci``: the
betting interval over trials for one seed, over the per-seed means for several), and pairs configurations that differ in exactly one factor, seed by seed and trial by trial
on identical faults.

>>> rows = [{"recipe": r, "seed": s, "ber": 0.01, "status": "ok", "trials": 2, "clean_accuracy": 0.9,
...          "_seed": s, "_fault_key": 0, "_dataset": "digits", "_accuracies": [a, a - 0.1], "_rerrs": None,
...          "rerr_mean": None, "dir": f"{r}{s}"}
...         for r, a in (("normal", 0.8), ("sam", 0.9)) for s in (0, 1)]
>>> study = build_study(rows)
>>> [c.label for c in study.configs], study.factors
(['recipe=normal', 'recipe=sam'], ['recipe'])
>>> round(study.cell(study.configs[1], 0.01).accuracy.mean, 6)
0.85
>>> p = study.pairs[0]
>>> (p.factor, p.baseline, p.value, p.seeds, round(p.accuracy.mean, 6), p.accuracy.excludes_zero)  # 2 seeds: too few
('recipe', 'normal', 'sam', 2, 0.1, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from qfi_cli.report.collect import SHARPNESS, config_label, config_order, factors, shown_value, sort_value
from qfi_cli.stats import mean_of_means, seed_range, two_level_ci


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (None below two values)."""

    mean: float | None
    low: float | None = None
    high: float | None = None

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval lies wholly on one side of 0 (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Config:
    """One configuration: its factor values (``values``), its label, and a hashable key."""

    key: tuple
    values: dict = field(compare=False, hash=False)
    label: str = field(compare=False)
    shown: dict = field(default_factory=dict, compare=False, hash=False)  # factor -> its text in labels


@dataclass
class Cell:
    """One configuration at one BER, its training seeds aggregated: one ok row per seed (seed order)."""

    config: Config
    ber: float
    rows: list[dict[str, Any]]
    accuracy: Estimate
    rerr: Estimate
    rerr_per_trial: bool  # False: some seed has no per-trial RErr (older results.json): mean only, no interval

    @property
    def seeds(self) -> list[Any]:
        return [r.get("_seed") for r in self.rows]

    @property
    def trials(self) -> list[int]:
        return sorted({r["trials"] for r in self.rows})


@dataclass
class Pair:
    """Paired difference value - baseline of ``factor`` (all other factors at ``at``) at one BER: per training
    seed evaluated on the same faults in both, per trial; mean over seeds of the mean over trials."""

    factor: str
    baseline: Any
    value: Any
    at: dict[str, Any]
    ber: float
    seeds: int
    trials: list[int]
    accuracy: Estimate
    rerr: Estimate
    a: Config
    b: Config
    sequential: bool = False  # some trial count was chosen adaptively: confidence-sequence intervals


@dataclass
class Study:
    factors: list[str]
    configs: list[Config]
    bers: list[float]
    cells: dict[tuple, Cell]
    clean_error: dict[tuple, Estimate]
    sharpness: dict[tuple, dict[str, float | None]]
    pairs: list[Pair]
    notes: list[str]
    attacks: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)  # config key -> attack rows, per seed

    def cell(self, config: Config, ber: float) -> Cell | None:
        return self.cells.get((config.key, ber))

    def seeds(self, config: Config) -> set:
        """The training seeds behind a configuration: those of its cells and of its attacks."""
        return ({s for c in self.cells.values() if c.config == config for s in c.seeds}
                | {r["_seed"] for r in self.attacks.get(config.key, []) if r.get("_seed") is not None})

    @property
    def sequential(self) -> bool:
        """Whether some cell stopped its trials adaptively (``eval.precision``): its intervals, and so the report's
        wording, are the confidence sequence's."""
        return any(sequential(c.rows) for c in self.cells.values())

    def seed_counts(self) -> list[int]:
        """The number of training seeds of each configuration (over its cells and attacks)."""
        return [len(self.seeds(cfg)) for cfg in self.configs]

    @property
    def attacks_only(self) -> bool:
        """Whether the study holds attacks (attack.json) and no random-error evaluation (results.json)."""
        return bool(self.attacks) and not self.cells

    def pair(self, factor: str, baseline: Any, config: Config, ber: float) -> Pair | None:
        """The paired difference of ``config`` from the configuration with ``factor`` = ``baseline``."""
        return next((p for p in self.pairs if p.factor == factor and p.baseline == baseline and p.b == config
                     and p.ber == ber), None)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _estimate(groups: list[list[float]], lo: float = 0.0, sequential: bool = False) -> Estimate:
    """Mean over seeds of the per-seed means and its interval; values in [lo, 1] (lo = -1: paired differences);
    ``sequential``: some trial count was chosen adaptively (``eval.precision``): the confidence sequence's."""
    low, high = two_level_ci(groups, lo=lo, sequential=sequential)
    return Estimate(mean_of_means(groups), low, high)


def sequential(rows: list[dict[str, Any]]) -> bool:
    """Whether any of ``rows`` stopped its trials adaptively (``eval.precision``): intervals over them are then
    the confidence sequence's (``qfi_cli.stats``).

    >>> sequential([{"_sequential": False}, {"_sequential": True}]), sequential([{}])
    (True, False)
    """
    return any(r.get("_sequential") for r in rows)


def _rerr(rows: list[dict[str, Any]]) -> tuple[Estimate, bool]:
    if all(r.get("_rerrs") is not None for r in rows):
        return _estimate([r["_rerrs"] for r in rows], sequential=sequential(rows)), True
    means = [r.get("rerr_mean") for r in rows]
    return Estimate(None if None in means else _mean(means)), False


def _config(row: dict[str, Any], keys: list[str]) -> Config:
    values = {k: row.get(k) for k in keys}
    label = config_label(row, keys)
    return Config((tuple((k, repr(v)) for k, v in values.items()), label), values, label,
                  {k: shown_value(row, k) for k in keys})


def _one_per_seed(rows: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """One row per training seed: where a seed has several (sweeps mixed into one directory), the one with the
    most trials (then the first directory), with a note."""
    by_seed: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_seed.setdefault(r.get("_seed"), []).append(r)
    kept = []
    for seed, group in sorted(by_seed.items(), key=lambda kv: sort_value(kv[0])):
        best = max(group, key=lambda r: r["trials"])  # the first of the longest: rows come in directory order
        if len(group) > 1:
            others = ", ".join(r["dir"] for r in group if r is not best)
            notes.append(f"{len(group)} results for one model (seed {seed}) at p={best['ber']:g}: using "
                         f"{best['dir']} ({best['trials']} trials), not {others}")
        kept.append(best)
    return kept


def _pairable(ra: dict[str, Any], rb: dict[str, Any]) -> bool:
    """Trial t of both saw the same faults: same fault seed and data set, and the same trial count (adaptively
    stopped rows: their common first trials, where the confidence sequence is valid too)."""
    return (ra.get("_fault_key") is not None and ra.get("_fault_key") == rb.get("_fault_key")
            and (ra["trials"] == rb["trials"] or sequential([ra, rb])) and ra.get("_dataset") == rb.get("_dataset"))


def _paired(ca: Cell, cb: Cell, factor: str) -> Pair | None:
    by_seed = {r.get("_seed"): r for r in cb.rows}
    matched = [(ra, by_seed[ra.get("_seed")]) for ra in ca.rows
               if ra.get("_seed") in by_seed and _pairable(ra, by_seed[ra.get("_seed")])]
    if not matched:
        return None
    acc = [[b - a for a, b in zip(ra["_accuracies"], rb["_accuracies"])] for ra, rb in matched]
    with_rerrs = all(ra.get("_rerrs") is not None and rb.get("_rerrs") is not None for ra, rb in matched)
    rerr = [[b - a for a, b in zip(ra["_rerrs"], rb["_rerrs"])] for ra, rb in matched] if with_rerrs else None
    adaptive = sequential([r for pair in matched for r in pair])
    return Pair(factor, ca.config.values[factor], cb.config.values[factor],
                {k: v for k, v in ca.config.values.items() if k != factor}, ca.ber, len(matched),
                sorted({len(d) for d in acc}), _estimate(acc, lo=-1.0, sequential=adaptive),
                _estimate(rerr, lo=-1.0, sequential=adaptive) if rerr is not None else Estimate(None), ca.config,
                cb.config, adaptive)


def _configs(rows: list[dict[str, Any]], keys: list[str]) -> dict[tuple, Config]:
    """The distinct configurations of ``rows``, keyed by ``Config.key``, in ``config_order``."""
    configs: dict[tuple, Config] = {}
    for r in sorted(rows, key=lambda r: config_order(r, keys)):
        cfg = _config(r, keys)
        configs.setdefault(cfg.key, cfg)
    return configs


def _cells(ok: list[dict[str, Any]], keys: list[str], configs: dict[tuple, Config],
           notes: list[str]) -> dict[tuple, Cell]:
    """One ``Cell`` per (configuration key, BER) of the ok sweep rows, one row per training seed."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok:
        grouped.setdefault((_config(r, keys).key, r["ber"]), []).append(r)
    cells = {}
    for (key, ber), group in grouped.items():
        kept = _one_per_seed(group, notes)
        rerr, per_trial = _rerr(kept)
        cells[(key, ber)] = Cell(configs[key], ber, kept,
                                 _estimate([r["_accuracies"] for r in kept], sequential=sequential(kept)), rerr,
                                 per_trial)
    return cells


def _seed_rows(key: tuple, cells: dict[tuple, Cell],
               attacks: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Configuration ``key``'s rows by training seed: its cells' rows, else (a seed only attacked) its attack row."""
    seeds: dict[Any, list[dict[str, Any]]] = {}
    for (k, _), cell in cells.items():
        if k == key:
            for r in cell.rows:
                seeds.setdefault(r.get("_seed"), []).append(r)
    for r in attacks:  # a model only attacked: its clean accuracy and sharpness from there
        if r.get("_seed") not in seeds and r.get("clean_accuracy") is not None:
            seeds[r.get("_seed")] = [r]
    return seeds


def _clean_error(seeds: dict[Any, list[dict[str, Any]]]) -> Estimate:
    """The clean error over training seeds (each seed's mean clean accuracy first), with its seed range."""
    errors = [1.0 - _mean([r["clean_accuracy"] for r in rs]) for rs in seeds.values()]
    return Estimate(_mean(errors), *seed_range(errors))


def _sharpness(seeds: dict[Any, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Each ``SHARPNESS`` measure's mean over training seeds (each seed's mean first; seeds without it skipped)."""
    sharpness = {}
    for name in SHARPNESS:
        per_seed = [_mean(v) for rs in seeds.values() if (v := [r[f"_{name}"] for r in rs
                                                               if r.get(f"_{name}") is not None])]
        sharpness[name] = _mean(per_seed)
    return sharpness


def _pairs(ordered: list[Config], keys: list[str], cells: dict[tuple, Cell], notes: list[str]) -> list[Pair]:
    """The paired one-factor differences at every shared BER > 0, sorted by factor (notes for unpairable ones)."""
    pairs = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            differ = [k for k in keys if a.values[k] != b.values[k]]
            if len(differ) != 1:
                continue
            for ber in sorted({ber for (k, ber) in cells if k == a.key and ber > 0}):
                if (b.key, ber) in cells:
                    pair = _paired(cells[(a.key, ber)], cells[(b.key, ber)], differ[0])
                    if pair is None:
                        notes.append(f"{a.label} and {b.label} at p={ber:g}: no training seed evaluated on the "
                                     "same faults (fault seed, trials, data set): not paired")
                    else:
                        pairs.append(pair)
    pairs.sort(key=lambda p: keys.index(p.factor))  # stable: within a factor, configuration order then BER
    return pairs


def build_study(rows: Iterable[dict[str, Any]], attacks: Iterable[dict[str, Any]] = ()) -> Study:
    """Aggregate ``collect`` rows over training seeds and pair one-factor changes (see the module docstring).

    Only ok rows count. Configurations come in ``config_order`` (recipe innermost, ``normal`` first); a pair's
    baseline is the earlier of its two configurations. Differences and means are fractions (not %). ``attacks``
    are ``report.attack.collect_attacks`` rows (attack.json points): their configurations join the study, and
    ``Study.attacks`` holds each configuration's attack rows, one per training seed.
    """
    rows, attacks = list(rows), list(attacks)
    keys = factors(rows + attacks)
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: config_order(r, keys))
    ok_attacks = sorted((r for r in attacks if r.get("status") == "ok"), key=lambda r: config_order(r, keys))
    configs = _configs(ok + ok_attacks, keys)
    attacked: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_attacks:
        attacked.setdefault(_config(r, keys).key, []).append(r)
    notes: list[str] = []
    cells = _cells(ok, keys, configs, notes)
    clean_error, sharpness = {}, {}
    for key in configs:
        seeds = _seed_rows(key, cells, attacked.get(key, []))
        clean_error[key] = _clean_error(seeds)
        sharpness[key] = _sharpness(seeds)
    ordered = list(configs.values())
    pairs = _pairs(ordered, keys, cells, notes)
    attack_rows = {key: _one_attack_per_seed(group, notes) for key, group in attacked.items()}
    return Study(keys, ordered, sorted({ber for (_, ber) in cells}), cells, clean_error, sharpness, pairs, notes,
                 attack_rows)


def _one_attack_per_seed(rows: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """One attack per training seed (the first directory), with a note where a seed has several."""
    by_seed: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_seed.setdefault(r.get("_seed"), []).append(r)
    kept = []
    for seed, group in sorted(by_seed.items(), key=lambda kv: sort_value(kv[0])):
        group = sorted(group, key=lambda r: r["dir"])
        if len(group) > 1:
            notes.append(f"{len(group)} attacks of one model (seed {seed}): using {group[0]['dir']}, not "
                         f"{', '.join(r['dir'] for r in group[1:])}")
        kept.append(group[0])
    return kept


__all__ = ["Cell", "Config", "Estimate", "Pair", "Study", "build_study"]

"""Read a sweep directory: one row per ``results.json`` (a point at one bit error rate), checked before it counts.

A row holds the point's swept values (each key of ``point`` but ``fault.ber``), then ``COLUMNS``; keys starting
with ``_`` are private (per-trial lists, training and fault seeds, model facts) for the study and the plots. An ok
row has been checked: numbers are finite numbers in range and the per-trial lists have ``trials`` entries.
Anything else is a row with status ``unreadable`` (not a JSON object) or ``invalid`` (an ok status whose numbers
do not hold) and a one-line ``error``; failed points keep their status ``failed``.

>>> import tempfile, pathlib
>>> from qfi_cli.io import write_json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_json(d / "p0" / "results.json", {"status": "failed", "error": "boom", "point": {"fault.ber": 0.1}})
>>> _ = write_json(d / "p1" / "results.json", {"status": "ok", "ber": "x"})
>>> [(r["ber"], r["status"], r["error"], r["dir"]) for r in collect(d)]
[(None, 'invalid', 'invalid results.json: ber is "x", not a number', 'p1'), (0.1, 'failed', 'boom', 'p0')]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from qfi_cli.errors import QfiError
from qfi_cli.io import read_json
from qfi_cli.layout import MODELS_DIR, RESULTS
from qfi_cli.quant.convert import widths_label
from qfi_cli.quant.torch_ao import AO_QUANTIZER
from qfi_cli.report.fields import Invalid, integer, is_number, number, one_line, show
from qfi_cli.report.sections import result_names
from qfi_cli.stats import describe_ci, mean_ci

BER_KEY = "fault.ber"
SEED_KEY = "seed"  # the training seed: a replicate, not a factor
RECIPE_KEY = "recipe"
WBITS_KEY = "quant.wbits"
BASELINE_RECIPE = "normal"
RECIPE_ORDER = ("normal", "rquant", "clipping", "randbet", "advbet", "sam", "sam_clipping", "sam_randbet",
                "sam_advbet")
# The columns of a row after the swept keys, in summary.csv order (the first eleven are the documented ones).
COLUMNS = ("ber", "trials", "clean_accuracy", "accuracy_mean", "accuracy_std", "ci95_low", "ci95_high",
           "rerr_mean", "status", "error", "dir", "train_seed", "fault_seed", "ci", "forwards")
SHARPNESS = ("sharpness_worst", "sharpness_random")


# ---------------------------------------------------------------------------------------------------- values

def _float(value: Any) -> float | None:
    """A finite number as a float, else None (strings that spell numbers included, for rows read from CSV)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _per_trial(res: dict, key: str, trials: int, required: bool) -> list[float] | None:
    values = res.get(key)
    if values is None:
        if required:
            raise Invalid(f"{key} (one value per trial) is missing")
        return None
    if not isinstance(values, list):
        raise Invalid(f"{key} is {show(values)}, not a list")
    if len(values) != trials:
        raise Invalid(f"{key} has {len(values)} entries but trials is {trials}")
    for v in values:
        if not is_number(v) or not 0.0 <= v <= 1.0:
            raise Invalid(f"{key} holds {show(v)}, not a fraction in [0, 1]")
    return [float(v) for v in values]


def _consistent(key: str, values: list[float] | None, mean: float | None) -> None:
    # the file's mean must be its trials' mean (up to float rounding of a sum of <= 2^20 fractions)
    if values is not None and mean is not None and abs(math.fsum(values) / len(values) - mean) > 1e-9:
        raise Invalid(f"{key} is {mean} but its trials average {math.fsum(values) / len(values)}")


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------------- files

def result_files(root: Path, name: str = RESULTS) -> list[Path]:
    """Every file named exactly ``name`` (results.json) under ``root``, outside hidden directories and
    ``models/``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (d == MODELS_DIR and Path(dirpath) == root))
        if name in filenames and os.path.isfile(os.path.join(dirpath, name)):
            found.append(Path(dirpath) / name)
    return found


def pending_points(sweep_dir: str | Path) -> list[str]:
    """Point directories without a results.json (or a report section's file, attack.json): not run yet or
    interrupted (relative paths, sorted).

    A point directory is one Hydra made (it holds ``.hydra/``) or an empty one; a point that evaluates several
    rates keeps them in subdirectories (``fault.ber=<p>/results.json``) and counts as pending only when none has
    finished; directories with other content and no results.json (``models/<digest>/``) are not points.
    """
    root = Path(sweep_dir)
    pending = []
    finished = (RESULTS, *result_names())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if any(name in filenames for name in finished):
            dirnames[:] = []  # a finished point: whatever lies below belongs to it
            continue
        hydra_made = (here / ".hydra").is_dir()
        empty = not filenames and not any(os.scandir(here))
        if here != root and (empty or (hydra_made and not any(here.rglob(RESULTS)))):
            pending.append(here.relative_to(root).as_posix())
    return pending


def _read(path: Path) -> Any:
    """The parsed JSON of ``path``; Invalid (reason, one line) when it cannot be read or parsed."""
    try:
        return read_json(path)
    except json.JSONDecodeError as e:
        raise Invalid(f"{RESULTS} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise Invalid(f"{RESULTS} is not UTF-8 text") from None
    except OSError as e:
        raise Invalid(f"cannot read {RESULTS}: {e.strerror or type(e).__name__}") from None
    except (ValueError, RecursionError) as e:
        raise Invalid(f"cannot parse {RESULTS}: {type(e).__name__}") from None


def _ok_fields(res: dict, point: dict) -> dict[str, Any]:
    """The checked numbers of an ok results.json (raises Invalid naming the first that does not hold)."""
    if res.get("ber") is None and point.get(BER_KEY) is not None:
        res = {**res, "ber": point[BER_KEY]}
    ber = number(res, "ber")
    trials = integer(res, "trials", low=1)
    accuracies = _per_trial(res, "accuracies", trials, required=True)
    rerrs = _per_trial(res, "rerrs", trials, required=False)
    mean = number(res, "accuracy_mean")
    rerr_mean = number(res, "rerr_mean", required=rerrs is not None)
    _consistent("accuracy_mean", accuracies, mean)
    _consistent("rerr_mean", rerrs, rerr_mean)
    metrics = res.get("train_metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise Invalid(f"train_metrics is {show(metrics)}, not an object")
    sharp = {k: number(metrics or {}, k, low=None, high=None, required=False) for k in SHARPNESS}
    for key in ("model", "dataset", "recipe"):
        if res.get(key) is not None and not isinstance(res[key], str):
            raise Invalid(f"{key} is {show(res[key])}, not a string")
    adaptive = res.get("precision") is not None  # trials stopped at a precision: the confidence sequence's interval
    low, high = mean_ci(accuracies, sequential=adaptive)
    return {
        "ber": ber, "trials": trials, "clean_accuracy": number(res, "clean_accuracy"),
        "accuracy_mean": mean, "accuracy_std": number(res, "accuracy_std", high=None, required=False),
        "ci95_low": low, "ci95_high": high, "rerr_mean": rerr_mean,
        "train_seed": integer(res, "seed", required=False),
        "fault_seed": integer(res, "fault_seed", required=False),
        "ci": describe_ci(1, sequential=adaptive) if low is not None else "",
        "forwards": integer(res, "forwards", low=0, required=False), "_sequential": adaptive,
        "_accuracies": accuracies, "_rerrs": rerrs,
        "_model": res.get("model"), "_dataset": res.get("dataset"), "_recipe": res.get("recipe"),
        "_wbits": integer(res, "wbits", low=1, required=False),
        "_widths": stored_label(res),
        "_rho": number(res, "rho", low=0.0, high=None, required=False),
        **{f"_{k}": v for k, v in sharp.items()},
    }


def _row(path: Path, root: Path) -> dict[str, Any]:
    rel = path.parent.relative_to(root).as_posix()
    bad = {"_point": {}, "ber": None, "dir": rel}
    try:
        res = _read(path)
    except Invalid as e:
        return {**bad, "status": "unreadable", "error": str(e)}
    if not isinstance(res, dict):
        return {**bad, "status": "unreadable", "error": f"{RESULTS} holds {_json_type(res)}, not a JSON object"}
    point = res.get("point", {})
    if not isinstance(point, dict):
        return {**bad, "status": "invalid", "error": f"invalid {RESULTS}: point is {show(point)}, not an object"}
    swept = {k: v for k, v in point.items() if k != BER_KEY}
    ber = _float(res.get("ber"))
    ber = _float(point.get(BER_KEY)) if ber is None else ber
    status = res.get("status", "ok" if "accuracy_mean" in res else None)
    if status != "ok":
        bad = {**bad, "_point": swept, "ber": ber, "_seed": point.get(SEED_KEY)}
        if not isinstance(status, str) or not status:
            return {**bad, "status": "invalid", "error": f"invalid {RESULTS}: status is {show(status)}"}
        return {**bad, "status": status, "error": one_line(res.get("error")) or status}
    try:
        fields = _ok_fields(res, point)
    except Invalid as e:
        return {**bad, "_point": swept, "ber": ber, "_seed": point.get(SEED_KEY), "status": "invalid",
                "error": f"invalid {RESULTS}: {e}"}
    seed = fields["train_seed"] if fields["train_seed"] is not None else point.get(SEED_KEY)
    # Old files have no fault_seed: their fault patterns were keyed by the seed.
    fault_key = fields["fault_seed"] if fields["fault_seed"] is not None else seed
    return {"_point": swept, **fields, "status": "ok", "error": "", "dir": rel, "_seed": seed,
            "_fault_key": fault_key}


# ---------------------------------------------------------------------------------------------------- order

def sort_value(value: Any, key: str | None = None) -> tuple:
    """Sort key of a swept value: missing first, numbers (and numeric strings) numerically, then text; recipes
    in ``RECIPE_ORDER`` (the baseline ``normal`` first) before other names.

    >>> sorted([16, 4, "8"], key=sort_value)
    [4, '8', 16]
    >>> sorted(["sam", "zeta", "normal"], key=lambda v: sort_value(v, "recipe"))
    ['normal', 'sam', 'zeta']
    """
    if value is None or value == "":
        return (0, 0.0, "")
    if key == RECIPE_KEY and str(value) in RECIPE_ORDER:
        return (1, float(RECIPE_ORDER.index(str(value))), "")
    x = _float(value)
    if x is not None:
        return (1 if key != RECIPE_KEY else 2, x, "")
    return (3, 0.0, str(value))


def swept_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The swept keys (other than the BER) of ``rows``, in order of first appearance; ``seed`` included.

    >>> swept_keys([{"sam.rho": 0.0, "ber": 0.1, "status": "ok", "_seed": 0}])
    ['sam.rho']
    """
    keys: dict[str, None] = {}
    for row in rows:
        for k in row:
            if k not in COLUMNS and not k.startswith("_"):
                keys.setdefault(k, None)
    return list(keys)


def factors(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The factors of a sweep: its swept keys but the training seed (a replicate) and the BER (the x axis).

    >>> factors([{"recipe": "sam", "quant.wbits": 8, "seed": 0, "ber": 0.01, "status": "ok"}])
    ['recipe', 'quant.wbits']
    """
    return [k for k in swept_keys(rows) if k != SEED_KEY]


def _fmt(value: Any) -> str:
    return "" if value is None else str(value)


def stored_label(res: dict[str, Any]) -> str | None:
    """The stored weight widths a result says ran (``w4 (first/last 8)``), from its ``widths`` (layer -> bits) and
    ``wbits``; None for results that predate them.

    >>> stored_label({"wbits": 4, "widths": {"conv1": 8, "conv2": 4, "fc": 8}}), stored_label({"wbits": 4})
    ('w4 (first/last 8)', None)
    """
    if res.get("quantizer") == AO_QUANTIZER and isinstance(res.get("wbits_label"), str):
        return res["wbits_label"]  # torch.ao's own int8 codes
    widths = res.get("widths")
    if not isinstance(widths, dict) or not widths or not all(isinstance(v, int) for v in widths.values()):
        return None
    wbits = res.get("wbits")
    return widths_label(widths, wbits if isinstance(wbits, int) else None)


def shown_value(row: dict[str, Any], key: str) -> str:
    """A factor's value as labels show it: ``quant.wbits`` says the widths that were stored when some layers kept
    others (``4 (first/last 8)``).

    >>> shown_value({"quant.wbits": 4, "_widths": "w4 (first/last 8)"}, "quant.wbits")
    '4 (first/last 8)'
    >>> shown_value({"quant.wbits": 4, "_widths": "w4"}, "quant.wbits"), shown_value({"seed": 1}, "seed")
    ('4', '1')
    """
    value = row.get(key)
    text = "" if value is None else str(value)
    widths = row.get("_widths")
    if key == WBITS_KEY and widths and widths.startswith(f"w{text} ("):
        return f"{text} {widths[len(f'w{text} '):]}"
    return text


def config_label(row: dict[str, Any], keys: list[str] | None = None) -> str:
    """What tells one configuration from another: its factor values (``keys``, default the row's own swept keys
    but the seed); when nothing is swept, the model, its weight bits, recipe and SAM rho.

    >>> config_label({"quant.wbits": 4, "sam.rho": 0.05, "seed": 1, "ber": 1e-4, "status": "ok"})
    'quant.wbits=4 sam.rho=0.05'
    >>> config_label({"ber": 1e-4, "status": "ok", "_model": "digits_cnn", "_wbits": 8, "_rho": 0.05})
    'digits_cnn w8 sam.rho=0.05'
    >>> config_label({"ber": 1e-4, "_model": "digits_cnn", "_wbits": 4, "_recipe": "randbet", "_rho": 0.0})
    'digits_cnn w4 recipe=randbet sam.rho=0.0'
    """
    keys = factors([row]) if keys is None else keys
    parts = [f"{k}={shown_value(row, k)}" for k in keys if row.get(k) is not None and row.get(k) != ""]
    if parts:
        return " ".join(parts)
    model, wbits, recipe, rho = (row.get(k) for k in ("_model", "_wbits", "_recipe", "_rho"))
    widths = row.get("_widths") or f"w{_fmt(wbits) or '?'}"
    parts = [] if model is None and wbits is None else [f"{_fmt(model) or '?'} {widths}"]
    parts += [f"recipe={recipe}"] if recipe is not None else []
    parts += [f"sam.rho={rho}"] if rho is not None else []
    return " ".join(parts) or "default"


def config_order(row: dict[str, Any], keys: list[str]) -> tuple:
    """Sort key of a row's configuration: factor values in ``keys`` order with ``recipe`` innermost (so each
    block of rows compares recipes at the same other values, ``normal`` first); without factors, the label."""
    inner = [k for k in keys if k != RECIPE_KEY] + [k for k in keys if k == RECIPE_KEY]
    return (tuple(sort_value(row.get(k), k) for k in inner), config_label(row, keys))


def point_keys(raw: Iterable[dict[str, Any]]) -> list[str]:
    """The keys of the rows' ``_point`` dicts, in order of first appearance (every row gets each of them).

    >>> point_keys([{"_point": {"a": 1}}, {"_point": {"b": 2, "a": 3}}])
    ['a', 'b']
    """
    keys: dict[str, None] = {}
    for r in raw:
        for k in r["_point"]:
            keys.setdefault(k, None)
    return list(keys)


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per results.json under ``sweep_dir`` (hidden directories and ``models/`` skipped), sorted by
    configuration, BER, then training seed.

    A row holds the swept values (each key of the point but ``fault.ber``; ``seed`` too when swept), then
    ``ber``, ``trials``, ``clean_accuracy``, ``accuracy_mean``, ``accuracy_std``, ``ci95_low``, ``ci95_high``
    (``qfi_cli.stats.mean_ci``, the betting interval over the point's trials, recomputed from its accuracies), ``rerr_mean``,
    ``status`` ("ok", "failed", "invalid", "unreadable"), ``error`` ("" when ok), ``dir`` (relative to
    ``sweep_dir``), ``train_seed``, ``fault_seed``, ``ci`` (what the interval covers). Missing values are None.

    Raises QfiError when ``sweep_dir`` does not exist or holds no results.json.
    """
    root = Path(sweep_dir)
    if not root.exists():
        raise QfiError(f"sweep directory not found: {root}")
    if not root.is_dir():
        raise QfiError(f"not a directory: {root} (pass the sweep directory that holds the points)")
    files = result_files(root)
    if not files:
        raise QfiError(f"no {RESULTS} under {root}: not a sweep directory, or no point has finished yet")
    raw = [_row(f, root) for f in files]
    keys = point_keys(raw)
    rows = []
    for r in raw:
        point = r.pop("_point")
        rows.append({**{k: point.get(k) for k in keys}, **{c: r.get(c) for c in COLUMNS},
                     **{k: v for k, v in r.items() if k.startswith("_")}})
    keys_ = factors(rows)
    return sorted(rows, key=lambda r: (config_order(r, keys_), sort_value(r.get("ber")),
                                       sort_value(r.get("_seed")), r["dir"]))

"""What the benchmark scripts (scripts/bench_*.py) share: threads, the machine record, paired timing, results.

Every figure is a ratio of two (or more) code paths timed side by side in one process: each repeat runs every
path once, in a rotating order, and a ratio is the median over the repeats of the per-repeat ratios (robust to a
machine whose speed drifts while it runs, e.g. a shared one). Each script merges its section into
bench/results.json and renders bench/results.md from all sections; ``python scripts/_bench_common.py --readme``
copies that table into README.md's "Performance" section.

Environment: QFI_BENCH_THREADS (torch threads, default 1; 0: every core), QFI_BENCH_REPEATS (default 7, at least 5).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

REPEATS = max(5, int(os.environ.get("QFI_BENCH_REPEATS", "7")))
NOT_MEASURED = "not measured: no CUDA device"
_STARTED = time.perf_counter()  # a section's wall time runs from its script's import of this module to record()


def setup() -> int:
    """Fix torch's thread count and the seeds; return the threads.

    QFI_BENCH_THREADS sets the threads (0: every core); the default is 1. Ratios on one thread are stable: with
    several, every parallel region of a small op waits for its slowest thread, and on a machine that also runs
    anything else that costs a scheduler time slice (milliseconds) per op, which no code change could remove.
    """
    threads = int(os.environ.get("QFI_BENCH_THREADS", "1")) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    return threads


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(repeats: int = REPEATS) -> dict[str, Any]:
    """The machine, thread count and library versions a section was measured with."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "cuda": cuda, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
        "repeats": repeats, "date": time.strftime("%Y-%m-%d"),
    }


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    dev = torch.device(device)
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def paired(fns: dict[str, Callable[[], Any]], repeats: int = REPEATS, warmup: int = 1,
           device: str | torch.device = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, timed side by side in a rotating order."""
    sync = synchronizer(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over the repeats of time(num) / time(den)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def ratio_range(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float]:
    """Smallest and largest per-repeat ratio time(num) / time(den): how far one run's repeats spread."""
    values = [a / b for a, b in zip(times[num], times[den])]
    return float(f"{min(values):.4g}"), float(f"{max(values):.4g}")


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds of each timed function (rounded for the record)."""
    return {k: float(f"{statistics.median(v):.6g}") for k, v in times.items()}


def ber(rate: float) -> str:
    """A bit error rate for a note: '1e-5' rather than '1e-05' or '0.0001'."""
    return f"{rate:.0e}".replace("e-0", "e-")


def ms(seconds: float) -> str:
    """A duration for a note: milliseconds below 10 s, else seconds."""
    return f"{1e3 * seconds:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def row(item: str, value: float | None, target: str, met: bool | None, shown: str | None = None,
        note: str = "") -> dict[str, Any]:
    """One table row: ``value`` is the measured ratio (None: not measured), ``met`` None when no target applies."""
    if shown is None:
        shown = "—" if value is None else f"{value:.2f}x"
    return {"item": item, "ratio": None if value is None else float(f"{value:.4g}"), "shown": shown,
            "target": target, "met": met, "note": note}


def at_most(item: str, value: float, limit: float, note: str = "") -> dict[str, Any]:
    shown = f"{value:.3f}x" if round(value, 2) == limit else None  # do not show a miss as "2.10x <= 2.1x"
    return row(item, value, f"≤ {limit:g}x", value <= limit, shown=shown, note=note)


def speedup(item: str, value: float, least: float | None, note: str = "") -> dict[str, Any]:
    """A row for 'how many times faster' (value = slow / fast)."""
    if value >= 10:
        shown = f"{value:,.0f}x faster"
    elif value >= 1:
        shown = f"{value:.2f}x faster"
    else:
        shown = f"{1 / value:.2f}x slower"
    target = "—" if least is None else f"≥ {least:g}x faster"
    return row(item, value, target, None if least is None else value >= least, shown=shown, note=note)


def not_measured(item: str, target: str, why: str = NOT_MEASURED) -> dict[str, Any]:
    return row(item, None, target, None, shown=why)


def missed(rows: list[dict[str, Any]], marker: str) -> list[str]:
    """Items of ``rows`` whose name contains ``marker`` and that missed their target (short names for notes)."""
    return [r["item"].split(": ", 1)[-1] if ": " in r["item"] else r["item"]
            for r in rows if marker in r["item"] and r["met"] is False]


# -- results files ----------------------------------------------------------------------------------------------
def load_results() -> dict[str, Any]:
    try:
        data = json.loads(RESULTS_JSON.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("sections", {})
    return data


def record(section: str, title: str, rows: list[dict[str, Any]], details: dict[str, Any] | None = None,
           notes: list[str] | None = None, repeats: int = REPEATS) -> None:
    """Merge one script's section into bench/results.json (other sections are kept) and re-render results.md."""
    BENCH_DIR.mkdir(exist_ok=True)
    data = load_results()
    data["sections"][section] = {"title": title, "environment": environment(repeats), "rows": rows,
                                 "notes": notes or [], "details": details or {},
                                 "wall_seconds": round(time.perf_counter() - _STARTED, 1)}
    data["sections"] = dict(sorted(data["sections"].items()))
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(RESULTS_JSON)
    RESULTS_MD.write_text(render_markdown(data))
    for r in rows:
        status = {True: "met", False: "MISSED", None: ""}[r["met"]]
        print(f"  {r['item']:<62} {r['shown']:>22}  target {r['target']:<14} {status}")


def _met(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[value]


def _env_line(env: dict[str, Any]) -> str:
    gpu = f", GPU {env['cuda']}" if env.get("cuda") else ", no CUDA device"
    return (f"{env['cpu']} ({env['cores']} cores), torch {env['threads']} thread(s){gpu}; "
            f"torch {env['torch']}, numpy {env['numpy']}, Python {env['python']}, {env['os']}; "
            f"median of {env['repeats']} repeats; {env['date']}")


def render_table(data: dict[str, Any]) -> str:
    lines = ["| item | measured ratio | target | met? |", "|---|---|---|---|"]
    for sec in data["sections"].values():
        for r in sec["rows"]:
            lines.append(f"| {r['item']} | {r['shown']} | {r['target']} | {_met(r['met'])} |")
    envs = {_env_line(sec["environment"]) for sec in data["sections"].values()}
    lines.append("")
    lines.append("Measured on " + " / ".join(sorted(envs)) + ".")
    notes = [n for sec in data["sections"].values() for n in sec.get("notes", [])]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def render_markdown(data: dict[str, Any]) -> str:
    return ("# qfi benchmarks\n\nEvery figure is a ratio of two code paths timed side by side in one run "
            "(`make bench`; see scripts/bench_*.py).\n\n" + render_table(data))


def update_readme() -> None:
    """Put the current table into README.md's "## Performance" section (appended at the end when missing)."""
    data = load_results()
    if not data["sections"]:
        print("no benchmark results yet: run `make bench`", file=sys.stderr)
        return
    block = f"{BEGIN}\n{performance_intro(data)}\n\n{render_table(data)}{END}"
    text = README.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Performance\n\n" + block + "\n"
    README.write_text(text)


def performance_intro(data: dict[str, Any]) -> str:
    """README's paragraph above the table; its durations are the recorded sections' wall times."""
    sections = data["sections"].values()
    cores = "/".join(map(str, sorted({sec["environment"]["cores"] for sec in sections})))
    took = (f" (the scripts behind this table ran {sum(sec['wall_seconds'] for sec in sections) / 60:.1f} minutes "
            f"on {cores} CPU cores)" if all("wall_seconds" in sec for sec in sections) else "")
    return (f"Reproduce with `make bench`{took}: it installs the `bench` extra (pytorchfi, the peer of item 7), "
            "runs `scripts/bench_*.py`, writes `bench/results.json` (machine, threads, torch version, the seconds "
            "behind every ratio) and `bench/results.md`, and copies the table here. Each figure is a ratio of two "
            "code paths timed side by side in one run, the median over at least 5 repeats of the per-repeat "
            "ratios; torch runs on 1 thread unless `QFI_BENCH_THREADS` says otherwise (0: every core), which keeps "
            "ratios stable on a shared machine. Every figure in the notes below the table was measured in the same "
            "run. On a machine with CUDA, `scripts/bench_cuda.py` also measures the CUDA figures (item 6).")


if __name__ == "__main__":
    if "--readme" in sys.argv:
        update_readme()
    else:
        sys.stdout.write(render_markdown(load_results()))

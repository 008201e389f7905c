"""Run a fixed set of qfi commands and write a digest of every number and figure they produce.

Used to show a refactor changes no result: run it before and after, then compare the two digests::

    .venv/bin/python scripts/same_numbers.py run /tmp/before      # on the old commit
    .venv/bin/python scripts/same_numbers.py run /tmp/after       # on the new one
    .venv/bin/python scripts/same_numbers.py compare /tmp/before /tmp/after

The set: the demo (train, inject-eval at 1e-3, a 6-rate sweep), an attack on the demo model, and a small study sweep
(--train, recipe=normal,sam, quant.wbits=4,8, 2 rates). Timings, dates and paths are left out of the digest;
PNG files are compared byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

VOLATILE = {"seconds", "seconds_per_flip", "seconds_per_trial", "started", "finished", "date", "time", "host",
            "checkpoint", "faults_file", "out_dir", "dir", "path", "root", "init", "forward_seconds",
            "clean_seconds", "python", "torch", "qfi", "version", "threads", "inject_seconds"}


def commands(out: Path) -> list[list[str]]:
    qfi = [sys.executable, "-m", "qfi_cli.cli"]
    return [
        qfi + ["train", "--out", f"{out}/train"],
        qfi + ["inject-eval", "--ber", "1e-3", "--trials", "20", "--checkpoint", f"{out}/train/model.pt",
               "--out", f"{out}/inject"],
        qfi + ["sweep", "--bers", "1e-5,1e-4,3e-4,1e-3,3e-3,1e-2", "--trials", "20", "--checkpoint",
               f"{out}/train/model.pt", "--out", f"{out}/sweep"],
        qfi + ["attack", "--flips", "10", "--checkpoint", f"{out}/train/model.pt", "--out", f"{out}/attack"],
        qfi + ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "5", "--out", f"{out}/study", "recipe=normal,sam",
               "quant.wbits=4,8", "train.epochs=2"],
    ]


def scrub(value):
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in sorted(value.items()) if k not in VOLATILE and "seconds" not in k}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def csv_digest(path: Path) -> str:
    """A CSV's digest without its timing columns (any column whose name says seconds)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, name in enumerate(rows[0] if rows else []) if "seconds" not in name and name not in VOLATILE]
    text = "\n".join(",".join(row[i] for i in keep if i < len(row)) for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def digest(out: Path) -> dict[str, object]:
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        skipped = rel == "digest.json" or "/.hydra/" in f"/{rel}" or rel.endswith((".lock", ".log", ".pt", ".txt"))
        if not path.is_file() or skipped:
            continue
        if path.suffix == ".json" and not path.name.startswith("."):
            found[rel] = scrub(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            found[rel] = csv_digest(path)
        elif path.suffix in (".png", ".md", ".npz"):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def main() -> None:
    mode, *dirs = sys.argv[1:]
    if mode == "run":
        out = Path(dirs[0]).resolve()
        env = {**os.environ, "QFI_OUTPUTS": str(out / "outputs"), "OMP_NUM_THREADS": "1"}
        for cmd in commands(out):
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        (out / "digest.json").write_text(json.dumps(digest(out), indent=1, sort_keys=True))
        print(f"wrote {out / 'digest.json'}")
    else:
        a, b = (json.loads((Path(d) / "digest.json").read_text()) for d in dirs)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        for key in differ:
            print(f"differs: {key}")
        print(f"{len(set(a) | set(b)) - len(differ)} of {len(set(a) | set(b))} files equal")
        raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()

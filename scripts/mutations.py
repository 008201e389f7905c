"""Break registered parts on purpose and check that the fast tests notice (a mutant per registry, at least).

Each mutation is applied to a scratch copy of ``src/``, ``conf/`` and ``tests/``; then ``pytest -x`` runs the
registry and CLI smoke tests on that copy. A mutation that no test catches is a gap in the tests: the script
prints it and exits 1. Run from the repository root (about 5 minutes on 2 cores)::

    .venv/bin/python scripts/mutations.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_registries.py", "tests/test_commands.py", "tests/test_report.py", "tests/test_cli.py"]

# (name, file, text to replace, replacement[, tests]): each replacement must find its text, or the mutation is stale;
# tests (default TESTS) are the fast tests that must catch it
MUTATIONS = [
    ("resnet20 raises", "src/qfi_cli/models/resnet.py",
     "    return ResNetCifar(20, num_classes, in_channels, width, norm)", "    raise RuntimeError('broken')"),
    ("resnet18 raises", "src/qfi_cli/models/resnet.py",
     "    norm_layer(norm, 8)  # an unknown", "    raise RuntimeError('broken')\n    norm_layer(norm, 8)  # an unknown"),
    ("lenet5 layer shapes broken", "src/qfi_cli/models/small.py",
     "nn.Linear(16 * 5 * 5, 120)", "nn.Linear(16 * 4 * 4, 120)"),
    ("conf/fault/stuck_at_0.yaml names no fault model", "conf/fault/stuck_at_0.yaml", "model: stuck_at_0",
     "model: stuck_at_O"),
    ("fault source bitflip_count draws nothing", "src/qfi_cli/faults/sources/count.py",
     "        return drawn(self.mode, positions, at.bits, chosen)", "        return NO_ENTRIES, []"),
    ("conf/quant/minmax.yaml: wbits is no number", "conf/quant/minmax.yaml", "wbits: 8", "wbits: eight"),
    ("conf/model/resnet18.yaml is no YAML", "conf/model/resnet18.yaml", "small_input: true", "small_input: [true"),
    ("layer table: the Linear row lost", "src/qfi_cli/quant/layers.py", "@quantizes(nn.Linear)",
     "@quantizes(nn.Bilinear)"),
    ("layer table: conv twin ignores stride", "src/qfi_cli/quant/layers.py", "kernel_size, stride=conv.stride,",
     "kernel_size, stride=1,"),
    ("quantizer lsq: encoding claims the wrong sign", "src/qfi_cli/quant/quantizers.py",
     "self._encoding(x, bits, self.step, signed))", "self._encoding(x, bits, self.step, not signed))"),
    ("data set digits: one class short", "src/qfi_cli/data/datasets.py", "        num_classes=10,",
     "        num_classes=9,"),
    ("logger csv writes no metrics", "src/qfi_cli/loggers.py", '        atomic_write(path, write, mode="w")',
     "        pass", ["tests/test_loggers.py::test_csv_writes_rows_and_nothing_else"]),
    ("command train: its rule dropped", "src/qfi_cli/commands/train.py",
     '    if cfg.fault.enable_in_training and cfg.train.bet.mode != "none":', "    if False:"),
    ("command attack: finished points never skipped", "src/qfi_cli/commands/attack.py",
     "def finished(slot: Slot, job: Job) -> dict[str, Any] | None:",
     "def finished(slot: Slot, job: Job) -> dict[str, Any] | None:\n    return None\n\n\ndef _unused(slot, job):",
     ["tests/test_attack.py::test_sweep_command_attack_writes_points_resumes_and_reports"]),
    ("report section attack not registered", "src/qfi_cli/report/attack.py", "SECTION = register_section(Section(",
     "SECTION = (Section(", ["tests/test_attack.py::test_report_flips_to_target_over_seeds_with_censoring_and_failures"]),
]


def caught_by(name: str, path: str, old: str, new: str, tests: list[str] = TESTS) -> str | None:
    """Apply one mutation to a scratch copy and return the first failing test (None: nothing failed)."""
    with tempfile.TemporaryDirectory(prefix="qfi-mutation-") as scratch:
        tree = Path(scratch)
        for part in ("src", "conf", "tests", "pyproject.toml"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy)(source, tree / part)
        target = tree / path
        text = target.read_text()
        if old not in text:
            raise SystemExit(f"stale mutation {name!r}: {path} no longer holds {old!r}")
        target.write_text(text.replace(old, new, 1))
        env = dict(os.environ, PYTHONPATH=str(tree / "src"), MPLBACKEND="Agg")
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                             cwd=tree, env=env, capture_output=True, text=True)
        failed = re.findall(r"^FAILED (\S+)", run.stdout, re.M)
        return failed[0] if failed else (None if run.returncode == 0 else f"pytest exit {run.returncode}")


def main() -> int:
    survivors = []
    for name, path, old, new, *tests in MUTATIONS:
        test = caught_by(name, path, old, new, *tests)
        print(f"{name:<50} {'caught by ' + test if test else 'NOT CAUGHT'}", flush=True)
        if not test:
            survivors.append(name)
    if survivors:
        print(f"{len(survivors)} mutation(s) no fast test caught: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())

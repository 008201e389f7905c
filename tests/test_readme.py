"""Every ``qfi`` example in README.md runs: a user copies the README first.

**What runs.** Every line that starts with ``qfi `` inside a ```bash block of README.md, its ``# comment`` stripped
and the rest split as a shell would (``shlex``), in README order, through the real entry point
(``qfi_cli.cli.main``) in this process. Each must exit 0 (a sweep with a failed point exits 2). ``make demo`` /
``make test`` are not qfi commands (CI runs the Makefile); the ```python block is a doctest (tests/test_user.py).

**One sandbox, as a user has.** All examples share one working directory (``outputs/``, ``runs/``,
``latest_checkpoint.txt`` and ``faults.npz`` land there), so each may use what the earlier ones made, exactly as
for a user going down the README. ``HOME`` is a temporary home whose ``~/data`` holds tiny MNIST, Fashion-MNIST
(idx files) and CIFAR-10 (Python-2 pickles) written in torchvision's formats by tests/test_data.py's writers; the
working directory holds the package ``mypkg`` (``mypkg.nets.MyNet(hidden, num_classes, in_channels)``,
``mypkg.data.make(n)``; qfi searches the working directory last), ``float.pt`` (a float state_dict of MyNet) and
``chip.json`` (the README's own profile map, taken from its ```json block). ``QFI_OUTPUTS`` and ``QFI_DATA`` are
unset. Running one example alone (``-k``) runs the earlier ones first.

**Appended to keep it fast** (Hydra: a later value of a key wins, in a sweep's grid too, so ``train.epochs=1``
overrides an example's ``--epochs 10``), chosen by command (``sized``):

- ``train`` and ``sweep --train``: ``train.epochs=1 train.limit=64`` (one epoch on 64 samples); an example that
  asks for 0 epochs (post-training quantization) keeps 0.
- ``inject-eval``, ``sensitivity``, ``sweep``: ``eval.trials=2 eval.limit=100`` (2 fault patterns, 100 test images).
- ``attack`` and ``command=attack``: ``attack.flips=3 attack.random_trials=2 attack.batch=32 eval.limit=100``.
- every command: ``device=cpu``; the big grids are narrowed (``NARROW``): the study to two recipes at 8 bits and
  seed 0, the attack study to two recipes and seed 0.

None of this changes what an example shows: the same command, options, models, data sets, quantizers, recipes,
fault models, launcher and files; only fewer epochs, samples, trials, flips and grid points.

**Special cases.**

- ``qfi train ... --out runs/w4`` is followed by ``qfi train --out runs/w4 --resume`` ("continue a killed run"):
  it runs with ``train.epochs=2`` and is killed (exit 130) once its first epoch is saved; the resume gets nothing
  appended (it continues with the saved settings), must print "resuming" and finish the run.
- ``<time>`` in ``outputs/train/<time>/model.pt`` is the directory of the latest ``qfi train`` run; absolute
  output paths (``/scratch/...``) are mapped into the sandbox.
- ``--launcher slurm``: there is no cluster here. The example runs through the CLI as usual (options parsed, every
  point of the grid composed and validated, the sweep directory checked and recorded) up to the launch, which is
  replaced by ``--cfg hydra`` of its first point: the composed Hydra config must hold submitit's SlurmLauncher with
  the settings of conf/hydra/launcher/slurm.yaml. (``--launcher joblib`` runs for real.)
- A few examples assert more than exit 0 (``CHECKS``): the tilde example reads the files under the fake home, the
  resume resumes, ``fault.layers=[*conv*]`` exposes exactly the conv layers' bits, saved faults replay, the
  second identical attack sweep only resumes (rewrites no attack.json).
- The README's inline Python call ``qfi_cli.train({...}, "runs/ptq")`` runs last, in the same sandbox.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from tests.helpers import killed_after, qfi
from tests.test_data import write_cifar, write_mnist

README = Path(__file__).resolve().parents[1] / "README.md"

TRAIN = ["train.epochs=1", "train.limit=64"]
EVAL = ["eval.trials=2", "eval.limit=100"]
ATTACK = ["attack.flips=3", "attack.random_trials=2", "attack.batch=32", "eval.limit=100"]
# Substring of an example -> overrides that narrow its grid (appended after the example's own).
NARROW = {
    "+experiment=robustness": ["recipe=normal,randbet", "seed=0", "quant.wbits=8"],
    "command=attack recipe=normal,sam,randbet,sam_randbet": ["recipe=normal,randbet", "seed=0"],
}
KILLED = 130  # qfi's exit status when a run is interrupted


def readme_examples(text: str) -> list[str]:
    """The ``qfi`` command lines of the ```bash blocks of a README, in order, without their ``# comments``.

    >>> readme_examples("x\\n```bash\\nqfi train   # default\\nmake demo\\n```\\n```python\\nqfi x\\n```\\n")
    ['qfi train']
    """
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        lines += [without_comment(line) for line in block.splitlines() if line.startswith("qfi ")]
    return lines


def without_comment(line: str) -> str:
    """A shell line as written, less its trailing ``# comment`` (a ``#`` inside quotes stays).

    >>> without_comment("qfi a 'b # c'   # d")
    "qfi a 'b # c'"
    """
    words = shlex.split(line, comments=True)
    for i, c in enumerate(line):
        if c == "#" and line[i - 1:i].isspace():
            try:
                if shlex.split(line[:i]) == words:
                    return line[:i].rstrip()
            except ValueError:  # the # is inside quotes
                continue
    return line.rstrip()


def readme_json(text: str) -> dict[str, Any]:
    """The README's profile map (its ```json block with ``rates``)."""
    blocks = [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```", text, flags=re.S | re.M)]
    return next(b for b in blocks if "rates" in b)


TEXT = README.read_text(encoding="utf-8")
EXAMPLES = readme_examples(TEXT)


def resumed_by_next(index: int, examples: list[str]) -> bool:
    """Whether the next example resumes this one's run (``--out DIR`` then ``--out DIR --resume``)."""
    if index + 1 >= len(examples) or "--resume" not in shlex.split(examples[index + 1]):
        return False
    args, after = shlex.split(examples[index]), shlex.split(examples[index + 1])
    return "--out" in args and args[args.index("--out") + 1] == after[after.index("--out") + 1]


def sized(args: list[str], killed: bool = False) -> list[str]:
    """The example's arguments (after ``qfi``) with the size-limiting overrides appended (module docstring)."""
    command = args[0]
    if command == "train" and "--resume" in args:
        return args  # the saved run's settings: nothing to add
    extra = ["device=cpu"]
    trains = command == "train" or (command == "sweep" and "--train" in args)
    zero_epochs = "train.epochs=0" in args or any(a == "--epochs" and b == "0" for a, b in zip(args, args[1:]))
    if trains and not zero_epochs:
        extra += ["train.epochs=2" if killed else TRAIN[0], TRAIN[1]]
    elif trains:
        extra += TRAIN[1:]
    if command in ("inject-eval", "sensitivity", "sweep"):
        extra += EVAL
    if command == "attack" or "command=attack" in args:
        extra += ATTACK
    line = shlex.join(args)
    for needle, narrow in NARROW.items():
        if needle in line:
            extra += narrow
    return args + extra


# ------------------------------------------------------------------------------------------------- the sandbox

NETS = '''"""A user's own model."""
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, hidden: int = 16, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean((2, 3)))
'''

DATA = '''"""A user's own data: n 8x8 digit images (uint8, 0..240), the first 80% for training."""
import numpy as np


def make(n: int = 1000) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.arange(n) % len(digits.target)
    x, y = (digits.images[index] * 15).astype(np.uint8)[:, None], digits.target[index]
    k = n * 4 // 5
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}
'''


class Sandbox:
    """The README user's world: a working directory, a home with ``~/data``, and what the examples ran so far."""

    def __init__(self, root: Path, examples: list[str]) -> None:
        self.root, self.work, self.home = root, root / "work", root / "home"
        self.examples = examples
        self.done: dict[int, tuple[int, str]] = {}
        self.new: dict[int, list[Path]] = {}
        rng = np.random.default_rng(0)
        data = self.home / "data"
        write_mnist(data, "MNIST", rng, n_train=64, n_test=32)
        write_mnist(data, "FashionMNIST", rng, n_train=64, n_test=32)
        write_cifar(data, "cifar10", rng, per_file=2)  # 10 training images: SimpleNet is big
        package = self.work / "mypkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "nets.py").write_text(NETS)
        (package / "data.py").write_text(DATA)
        nets: dict[str, Any] = {}
        exec(NETS, nets)  # the user's float model, without importing mypkg into this process yet
        torch.manual_seed(0)
        torch.save(nets["MyNet"]().state_dict(), self.work / "float.pt")
        (self.work / "chip.json").write_text(json.dumps(readme_json(TEXT)))

    def files(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in self.work.rglob("*") if p.is_file()}

    def argv(self, index: int) -> list[str]:
        """The example's command line as run here: sized, ``<time>`` resolved, absolute paths in the sandbox."""
        args = shlex.split(self.examples[index])[1:]
        args = sized(args, killed=resumed_by_next(index, self.examples))
        if any("<time>" in a for a in args):
            latest = max((self.work / "outputs" / "train").iterdir(), key=lambda p: p.stat().st_mtime_ns)
            args = [a.replace("outputs/train/<time>", str(latest.relative_to(self.work))) for a in args]
        return [str(self.root / a.lstrip("/")) if a.startswith("/") else a for a in args]

    def run(self, index: int, capsys) -> tuple[int, str]:
        """Run the examples up to ``index`` (each once, in order); (exit status, output) of example ``index``."""
        for i in range(index + 1):
            if i not in self.done:
                before = self.files()
                self.done[i] = self._run(i, capsys)
                after = self.files()
                self.new[i] = sorted(p for p, t in after.items() if before.get(p) != t)
        return self.done[index]

    def _run(self, index: int, capsys) -> tuple[int, str]:
        args = self.argv(index)
        with pytest.MonkeyPatch.context() as mp:
            if resumed_by_next(index, self.examples):
                killed_after(mp, 1)
            if "--launcher" in args and args[args.index("--launcher") + 1] == "slurm":
                no_cluster(mp)
            return qfi(capsys, *args)

    def expected_status(self, index: int) -> int:
        return KILLED if resumed_by_next(index, self.examples) else 0


def no_cluster(mp: pytest.MonkeyPatch) -> None:
    """Replace a sweep's launch by ``--cfg hydra`` of its first point (after the CLI's checks, which run as usual)."""
    import qfi_cli.app as app
    from qfi_cli.validate import first_values

    real = app.run

    def run(overrides: list[str], prog: str = "qfi") -> dict[str, Any]:
        if "--multirun" not in overrides:
            return real(overrides, prog)
        return real([a for a in first_values(overrides) if a != "--multirun"] + ["--cfg", "hydra"], prog)

    mp.setattr(app, "run", run)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    box = Sandbox(root, EXAMPLES)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(box.work)
        mp.setenv("HOME", str(box.home))
        mp.delenv("QFI_OUTPUTS", raising=False)
        mp.delenv("QFI_DATA", raising=False)
        yield box
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def assert_ran(box: Sandbox, index: int, code: int, output: str) -> None:
    """Example ``index`` exited as it should; the message names the example and what ran before it."""
    wanted = box.expected_status(index)
    failed_before = [f"{i + 1}: {box.examples[i]}" for i in range(index)
                     if i in box.done and box.done[i][0] != box.expected_status(i)]
    assert code == wanted, (f"README example {index + 1} `{box.examples[index]}` (run as `qfi "
                            f"{shlex.join(box.argv(index))}`) exited {code}, not {wanted}"
                            + (f" (earlier examples failed: {failed_before})" if failed_before else "")
                            + f":\n{output}")


# ------------------------------------------------------------------------------------------------ extra checks

def _results(box: Sandbox, index: int) -> dict[str, Any]:
    found = [p for p in box.new[index] if p.name == "results.json"]
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _model_config(box: Sandbox, index: int) -> dict[str, Any]:
    found = [p for p in box.new[index] if p.name == "model.pt"]
    assert len(found) == 1, found
    return torch.load(found[0], weights_only=True)["config"]


def check_tilde(box: Sandbox, index: int, output: str) -> None:
    cfg = _model_config(box, index)
    assert cfg["data"]["name"] == "mnist" and cfg["data"]["root"] == str(box.home / "data"), cfg["data"]


def check_resume(box: Sandbox, index: int, output: str) -> None:
    assert "resuming from epoch 1 of 2" in output, output
    assert (box.work / "runs" / "w4" / "model.pt").is_file()
    assert _model_config(box, index)["quant"]["per_channel"] is True


def check_conv_layers(box: Sandbox, index: int, output: str) -> None:
    from qfi_cli.engine.evaluate import load_trained
    from qfi_cli.quant import quantized_layers

    res = _results(box, index)
    model, _, _ = load_trained(res["checkpoint"], torch.device("cpu"))
    bits = {name: layer.weight.numel() * layer.wbits for name, layer in quantized_layers(model)}
    conv = sum(b for name, b in bits.items() if "conv" in name)
    assert {n for n in bits if "conv" in n} == {"conv1", "conv2", "conv3"}
    assert res["bits_total"] == conv and res["bits_model"] == sum(bits.values()) > conv, res


def check_saved_faults(box: Sandbox, index: int, output: str) -> None:
    saved = np.load(box.work / "faults.npz", allow_pickle=False)
    assert json.loads(str(saved["meta"]))["trials"] == 2 and len(saved["bit"]) > 0


def check_replay(box: Sandbox, index: int, output: str) -> None:
    rows = [json.loads(p.read_text()) for p in box.new[index] if p.name == "results.json"]
    assert sorted(r["ber"] for r in rows) == [1e-3, 1e-2] and all(r["trials"] == 2 for r in rows), rows


def check_study(box: Sandbox, index: int, output: str) -> None:
    """The narrowed study: the command line's recipe, seed and width replace the experiment's own grid."""
    study = box.work / "runs" / "study"
    assert len(list((study / "models").iterdir())) == 2 and len(list(study.rglob("results.json"))) == 2 * 5
    assert "randbet" in (study / "table.md").read_text()


def check_slurm(box: Sandbox, index: int, output: str) -> None:
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in output, output
    assert "partition: gpu" in output and "gpus_per_node: 1" in output, output
    assert (box.root / "scratch" / "sweeps" / "sam" / ".qfi_sweep.json").is_file()


def check_second_attack_sweep(box: Sandbox, index: int, output: str) -> None:
    attacks = list((box.work / "runs" / "bfa").rglob("attack.json"))
    assert len(attacks) == 2 and not [p for p in box.new[index] if p.name == "attack.json"], box.new[index]


# Substring of an example -> its check; the first example containing it, or (with "#2") the second.
CHECKS: dict[str, Callable[[Sandbox, int, str], None]] = {
    "--dataset mnist data.root=~/data": check_tilde,
    "--out runs/w4 --resume": check_resume,
    "fault.layers=[*conv*]": check_conv_layers,
    "--save-faults faults.npz": check_saved_faults,
    "fault=replay fault.file=faults.npz": check_replay,
    "+experiment=robustness --out runs/study": check_study,
    "--launcher slurm": check_slurm,
    "--out runs/bfa command=attack#2": check_second_attack_sweep,
}


def checks_for(index: int, examples: list[str]) -> list[Callable[[Sandbox, int, str], None]]:
    out = []
    for key, check in CHECKS.items():
        needle, _, nth = key.partition("#")
        hits = [i for i, e in enumerate(examples) if needle in e]
        if hits[int(nth or 1) - 1:int(nth or 1)] == [index]:
            out.append(check)
    return out


# ------------------------------------------------------------------------------------------------------ tests

def test_examples_found():
    """The extraction sees the README's examples, and every size rule and check names one of them."""
    assert len(EXAMPLES) >= 40 and EXAMPLES[0] == "qfi train", EXAMPLES[:3]
    assert not [e for e in EXAMPLES if "#" in e.split("'")[0]], "a comment was not stripped"
    for key in list(NARROW) + list(CHECKS):
        needle, _, nth = key.partition("#")
        assert len([e for e in EXAMPLES if needle in e]) >= int(nth or 1), f"no README example matches {key!r}"
    assert sum(len(checks_for(i, EXAMPLES)) for i in range(len(EXAMPLES))) == len(CHECKS)


def test_sized_overrides_are_appended_and_win():
    assert sized(["train", "--epochs", "10"]) == ["train", "--epochs", "10", "device=cpu", *TRAIN]
    assert sized(["train", "model.init=float.pt", "train.epochs=0"])[-2:] == ["device=cpu", "train.limit=64"]
    assert sized(["train", "--out", "r", "--resume"]) == ["train", "--out", "r", "--resume"]
    assert sized(["sweep", "--train", "command=attack"]) == ["sweep", "--train", "command=attack", "device=cpu",
                                                             *TRAIN, *EVAL, *ATTACK]


@pytest.mark.slow
def test_a_broken_example_fails(tmp_path, capsys, monkeypatch):
    """A misspelled option in a copy of the README makes its example's test fail, naming the example."""
    broken = readme_examples(TEXT.replace("qfi train --wbits 4 --rho 0", "qfi train --wbitz 4 --rho 0"))
    box = Sandbox(tmp_path, broken)
    monkeypatch.chdir(box.work)
    index = broken.index("qfi train --wbitz 4 --rho 0")
    box.done.update({i: (0, "") for i in range(index)})  # the examples before it: not needed to fail this one
    code, output = box.run(index, capsys)
    with pytest.raises(AssertionError, match=re.escape("README example 2 `qfi train --wbitz 4 --rho 0`")):
        assert_ran(box, index, code, output)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(EXAMPLES)),
                         ids=[f"{i + 1:02d} {e[4:]}" for i, e in enumerate(EXAMPLES)])
def test_readme_example(index, sandbox, capsys):
    code, output = sandbox.run(index, capsys)
    assert_ran(sandbox, index, code, output)
    for check in checks_for(index, sandbox.examples):
        check(sandbox, index, output)


PYTHON_CALL = re.search(r"e\.g\.\s*`(qfi_cli\.train\(.*?\))`", TEXT, flags=re.S)


@pytest.mark.slow
def test_readme_python_call(sandbox):
    """The README's one-line call of the engine from Python (``qfi_cli.train({...}, "runs/ptq")``), in the same
    sandbox after the command-line examples."""
    import qfi_cli

    assert PYTHON_CALL, "README's qfi_cli.train(...) example was not found"
    metrics = eval(PYTHON_CALL.group(1), {"qfi_cli": qfi_cli})
    assert metrics["epochs"] == 0 and (sandbox.work / "runs" / "ptq" / "model.pt").is_file(), metrics

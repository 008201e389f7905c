"""Every ``qfi`` example in README.md runs: a user copies the README first.

**What runs.** Every line that starts with ``qfi `` inside a ```bash block of README.md, its ``# comment`` stripped
and the rest split as a shell would (``shlex``), through the real entry point (``qfi_cli.cli.main``) in this
process. Each must exit 0 (a sweep with a failed point exits 2). ``make demo`` / ``make test`` are not qfi commands
(CI runs the Makefile); the ```python block is a doctest (tests/test_user.py).

**Each example alone.** Every example runs in a fresh sandbox of its own (a working directory and a home; the
``sandbox`` fixture), holding exactly the inputs it names (``needs``), so any example runs alone
(``pytest tests/test_readme.py -k resume``) and in any order. ``QFI_OUTPUTS`` and ``QFI_DATA`` are unset. What an
example may need (``INPUTS``), and where it comes from:

- ``~/data``: the home's ``data/`` holds tiny MNIST, Fashion-MNIST (idx files) and CIFAR-10 (Python-2 pickles)
  written in torchvision's formats by tests/test_data.py's writers (for ``data.root=~/data``).
- ``mypkg``: the user's package in the working directory (``mypkg.nets.MyNet(hidden, num_classes, in_channels)``,
  ``mypkg.data.make(n)``; qfi searches the working directory last); ``float.pt``: a float state_dict of MyNet;
  ``resnet18.pt``: a float state_dict of torchvision's ResNet-18 (10 classes, random weights: no download);
  ``chip.json``: the README's own profile map (its ```json block).
- Made by the README's own examples, each run once per session in a sandbox of its own and copied in (``Made``):
  the latest model (``qfi train``: ``outputs/train/<time>/`` and ``outputs/latest_checkpoint.txt``) for a command
  given no ``--checkpoint`` and no ``--train``; ``runs/w4`` (``qfi train ... --out runs/w4``) for
  ``--checkpoint runs/w4/model.pt``; the same run killed once its first of 2 epochs is saved, for ``--resume``;
  ``faults.npz`` (``--save-faults faults.npz``) for ``fault.file=faults.npz``; your model (``qfi train
  model._target_=mypkg.nets.MyNet ... train.epochs=0``, in ``outputs/train/<time>/``) for ``<time>``.

**Appended to keep it fast** (Hydra: a later value of a key wins, in a sweep's grid too, so ``train.epochs=1``
overrides an example's ``--epochs 10``), chosen by command (``sized``):

- ``train`` and ``sweep --train``: ``train.epochs=1 train.limit=64`` (one epoch on 64 samples); an example that
  asks for 0 epochs (post-training quantization) keeps 0.
- ``inject-eval``, ``sensitivity``, ``sweep``: ``eval.trials=2 eval.limit=100`` (2 fault patterns, 100 test images)
  and ``eval.min_trials=2 eval.max_trials=20`` (``--precision``: at most 20 patterns).
- ``attack`` and ``command=attack``: ``attack.flips=3 attack.random_trials=2 attack.batch=32 eval.limit=100``.
- every command: ``device=cpu``; the big grids are narrowed (``NARROW``): the study to two recipes at 8 bits and
  seed 0, the attack study to two recipes and seed 0.

None of this changes what an example shows: the same command, options, models, data sets, quantizers, recipes,
fault models, launcher and files; only fewer epochs, samples, trials, flips and grid points.

**Special cases.**

- ``qfi train --out runs/w4 --resume`` ("continue a killed run") gets nothing appended (it continues with the saved
  settings: 2 epochs, the first done), must print "resuming" and finish the run.
- ``<time>`` in ``outputs/train/<time>/model.pt`` is the directory of the model there; absolute output paths
  (``/scratch/...``) are mapped into the sandbox.
- ``--launcher slurm``: there is no cluster here. The example runs through the CLI as usual (options parsed, every
  point of the grid composed and validated, the sweep directory checked and recorded) up to the launch, which is
  replaced by ``--cfg hydra`` of its first point: the composed Hydra config must hold submitit's SlurmLauncher with
  the settings of conf/hydra/launcher/slurm.yaml. (``--launcher joblib`` runs for real.)
- A few examples assert more than exit 0 (``CHECKS``): the tilde example reads the files under the fake home, the
  resume resumes, ``fault.layers=[*conv*]`` exposes exactly the conv layers' bits, saved faults replay, and the
  attack sweep, run again into the same ``--out`` (README: "run the same command into the same --out again"), only
  resumes (rewrites no attack.json).
- The README's inline Python call ``qfi_cli.train({...}, "runs/ptq")`` runs in a sandbox holding ``mypkg``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

from tests.helpers import killed_after, qfi
from tests.test_data import write_cifar, write_mnist

README = Path(__file__).resolve().parents[1] / "README.md"

TRAIN = ["train.epochs=1", "train.limit=64"]
EVAL = ["eval.trials=2", "eval.limit=100", "eval.min_trials=2", "eval.max_trials=20"]
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


# ---------------------------------------------------------------------------------------- what an example needs

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

W4 = "qfi train --wbits 4 train.lr=0.05 quant=minmax quant.per_channel=true --out runs/w4"

# Inputs made by README examples: name -> (the example, killed once its first epoch is saved?, the path kept).
MADE: dict[str, tuple[str, bool, str]] = {
    "latest model": ("qfi train", False, "outputs/train"),
    "runs/w4": (W4, False, "runs/w4"),
    "runs/w4 (killed)": (W4, True, "runs/w4"),
    "faults.npz": ("qfi inject-eval --checkpoint runs/w4/model.pt --bers 1e-3,1e-2 --save-faults faults.npz",
                   False, "faults.npz"),
    "your model": ("qfi train model._target_=mypkg.nets.MyNet model.init=float.pt train.epochs=0", False,
                   "outputs/train"),
}
INPUTS = ("~/data", "mypkg", "float.pt", "resnet18.pt", "chip.json", *MADE)


def needs(example: str) -> list[str]:
    """The inputs (``INPUTS``) a README example reads, from its command line alone.

    >>> needs("qfi inject-eval --ber 1e-4"), needs("qfi train --out runs/w4 --resume")
    (['latest model'], ['runs/w4 (killed)'])
    >>> needs("qfi attack --flips 20 --checkpoint outputs/train/<time>/model.pt --trust-code")
    ['mypkg', 'your model']
    """
    args = shlex.split(example)[1:]
    command, line = args[0], " ".join(args)
    wanted = {
        "~/data": "=~/data" in line,
        "mypkg": "mypkg." in line or "<time>" in line,
        "float.pt": "model.init=float.pt" in args,
        "resnet18.pt": "model.init=resnet18.pt" in args,
        "chip.json": "fault.file=chip.json" in args,
        "latest model": command != "train" and "--checkpoint" not in args and "--train" not in args,
        "runs/w4": "runs/w4/model.pt" in args,
        "runs/w4 (killed)": command == "train" and "--resume" in args,
        "faults.npz": "fault.file=faults.npz" in args,
        "your model": "<time>" in line,
    }
    return [name for name in INPUTS if wanted[name]]


class Made:
    """The inputs that README examples make, each made once per session (on first use) by running its example in
    a sandbox of its own (holding that example's own inputs), then copied into every sandbox that needs it."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.boxes: dict[str, Sandbox] = {}

    def box(self, name: str, capsys) -> Sandbox:
        if name not in self.boxes:
            example, killed, _ = MADE[name]
            with Sandbox.entered(self.factory.mktemp("made"), self) as box:
                code, output = box.run(example, capsys, killed=killed)
            assert code == (KILLED if killed else 0), f"making {name} by `{example}`: exit {code}:\n{output}"
            self.boxes[name] = box
        return self.boxes[name]

    def copy(self, name: str, into: Sandbox, capsys) -> None:
        kept = MADE[name][2]
        source, target = self.box(name, capsys).work / kept, into.work / kept
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        if name == "latest model":  # what `qfi train` records, pointing at the copy
            from qfi_cli.io import record_latest

            [model] = target.glob("*/model.pt")
            record_latest(into.work / "outputs", model)


# ------------------------------------------------------------------------------------------------- the sandbox

class Sandbox:
    """One example's world: a working directory and a home, holding only the inputs the example needs."""

    def __init__(self, root: Path, made: Made) -> None:
        self.root, self.work, self.home = root, root / "work", root / "home"
        self.made = made
        self.work.mkdir(parents=True)
        self.home.mkdir()
        self.new: list[Path] = []

    @classmethod
    @contextlib.contextmanager
    def entered(cls, root: Path, made: Made) -> Iterator[Sandbox]:
        """A sandbox made current: its working directory, its home, qfi's environment variables unset. On exit the
        user's package leaves ``sys.modules`` and ``sys.path`` is as before (qfi appends the working directory)."""
        box = cls(root, made)
        path = sys.path[:]
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(box.work)
                mp.setenv("HOME", str(box.home))
                mp.delenv("QFI_OUTPUTS", raising=False)
                mp.delenv("QFI_DATA", raising=False)
                yield box
        finally:
            sys.path[:] = path
            for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
                del sys.modules[name]

    def prepare(self, example: str, capsys) -> None:
        """Put the inputs ``example`` needs into this sandbox (each once)."""
        for name in needs(example):
            if name == "~/data":
                if (self.home / "data").exists():
                    continue
                rng = np.random.default_rng(0)
                data = self.home / "data"
                write_mnist(data, "MNIST", rng, n_train=64, n_test=32)
                write_mnist(data, "FashionMNIST", rng, n_train=64, n_test=32)
                write_cifar(data, "cifar10", rng, per_file=2)  # 10 training images: SimpleNet is big
            elif (self.work / name).exists() or (name in MADE and (self.work / MADE[name][2]).exists()):
                continue
            elif name == "mypkg":
                package = self.work / "mypkg"
                package.mkdir()
                (package / "__init__.py").write_text("")
                (package / "nets.py").write_text(NETS)
                (package / "data.py").write_text(DATA)
            elif name == "float.pt":
                nets: dict[str, Any] = {}
                exec(NETS, nets)  # the user's float model, without importing mypkg into this process
                torch.manual_seed(0)
                torch.save(nets["MyNet"]().state_dict(), self.work / "float.pt")
            elif name == "resnet18.pt":  # torchvision's ResNet-18 for 10 classes, random float weights
                import torchvision

                torch.manual_seed(0)
                torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), self.work / "resnet18.pt")
            elif name == "chip.json":
                (self.work / "chip.json").write_text(json.dumps(readme_json(TEXT)))
            else:
                self.made.copy(name, self, capsys)

    def files(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in self.root.rglob("*") if p.is_file()}

    def argv(self, example: str, killed: bool = False) -> list[str]:
        """The example's command line as run here: sized, ``<time>`` resolved, absolute paths in the sandbox."""
        args = sized(shlex.split(example)[1:], killed=killed)
        if any("<time>" in a for a in args):
            [run] = (self.work / "outputs" / "train").iterdir()
            args = [a.replace("outputs/train/<time>", str(run.relative_to(self.work))) for a in args]
        return [str(self.root / a.lstrip("/")) if a.startswith("/") else a for a in args]

    def run(self, example: str, capsys, killed: bool = False) -> tuple[int, str]:
        """Prepare the example's inputs and run it: (exit status, output); ``self.new``: the files it wrote."""
        self.prepare(example, capsys)
        args = self.argv(example, killed)
        before = self.files()
        with pytest.MonkeyPatch.context() as mp:
            if killed:
                killed_after(mp, 1)
            if "--launcher" in args and args[args.index("--launcher") + 1] == "slurm":
                no_cluster(mp)
            code, output = qfi(capsys, *args)
        self.new = sorted(p for p, t in self.files().items() if before.get(p) != t)
        return code, output


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


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Made:
    """The inputs README examples make (``MADE``), each made once per session, on first use."""
    return Made(tmp_path_factory)


@pytest.fixture
def sandbox(tmp_path, made) -> Iterator[Sandbox]:
    """A fresh, current sandbox for one example: empty until ``run`` / ``prepare`` puts the example's inputs in."""
    with Sandbox.entered(tmp_path, made) as box:
        yield box


def assert_ran(box: Sandbox, index: int, example: str, code: int, output: str) -> None:
    """README example ``index`` (0-based) exited 0; the message names the example, how it ran and its inputs."""
    assert code == 0, (f"README example {index + 1} `{example}` (run as `qfi {shlex.join(box.argv(example))}` with "
                       f"{needs(example) or 'no inputs'}) exited {code}, not 0:\n{output}")


# ------------------------------------------------------------------------------------------------ extra checks

def _results(box: Sandbox) -> dict[str, Any]:
    found = [p for p in box.new if p.name == "results.json"]
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _model_config(box: Sandbox) -> dict[str, Any]:
    found = [p for p in box.new if p.name == "model.pt"]
    assert len(found) == 1, found
    return torch.load(found[0], weights_only=True)["config"]


def check_tilde(box: Sandbox, example: str, output: str, capsys) -> None:
    cfg = _model_config(box)
    assert cfg["data"]["name"] == "mnist" and cfg["data"]["root"] == str(box.home / "data"), cfg["data"]


def check_resume(box: Sandbox, example: str, output: str, capsys) -> None:
    assert "resuming from epoch 1 of 2" in output, output
    assert (box.work / "runs" / "w4" / "model.pt").is_file()
    assert _model_config(box)["quant"]["per_channel"] is True


def check_conv_layers(box: Sandbox, example: str, output: str, capsys) -> None:
    from qfi_cli.engine.evaluate import load_trained
    from qfi_cli.quant import quantized_layers

    res = _results(box)
    model, _, _ = load_trained(res["checkpoint"], torch.device("cpu"))
    bits = {name: layer.weight.numel() * layer.wbits for name, layer in quantized_layers(model)}
    conv = sum(b for name, b in bits.items() if "conv" in name)
    assert {n for n in bits if "conv" in n} == {"conv1", "conv2", "conv3"}
    assert res["bits_total"] == conv and res["bits_model"] == sum(bits.values()) > conv, res


def check_saved_faults(box: Sandbox, example: str, output: str, capsys) -> None:
    saved = np.load(box.work / "faults.npz", allow_pickle=False)
    assert json.loads(str(saved["meta"]))["trials"] == 2 and len(saved["bit"]) > 0


def check_replay(box: Sandbox, example: str, output: str, capsys) -> None:
    rows = [json.loads(p.read_text()) for p in box.new if p.name == "results.json"]
    assert sorted(r["ber"] for r in rows) == [1e-3, 1e-2] and all(r["trials"] == 2 for r in rows), rows


def check_study(box: Sandbox, example: str, output: str, capsys) -> None:
    """The narrowed study: the command line's recipe, seed and width replace the experiment's own grid."""
    study = box.work / "runs" / "study"
    assert len(list((study / "models").iterdir())) == 2 and len(list(study.rglob("results.json"))) == 2 * 5
    assert "randbet" in (study / "table.md").read_text()


def check_slurm(box: Sandbox, example: str, output: str, capsys) -> None:
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in output, output
    assert "partition: gpu" in output and "gpus_per_node: 1" in output, output
    assert (box.root / "scratch" / "sweeps" / "sam" / ".qfi_sweep.json").is_file()


def check_rerun_resumes(box: Sandbox, example: str, output: str, capsys) -> None:
    """The same attack sweep again into the same ``--out`` only resumes (README, ``qfi sweep``: Resume): it
    rewrites no attack.json."""
    assert len(list((box.work / "runs" / "bfa").rglob("attack.json"))) == 2
    code, again = box.run(example, capsys)
    assert code == 0, again
    assert not [p for p in box.new if p.name == "attack.json"], box.new


# Substring of an example -> its check; the first example containing it, or (with "#2") the second.
CHECKS: dict[str, Callable[[Sandbox, str, str, Any], None]] = {
    "--dataset mnist data.root=~/data": check_tilde,
    "--out runs/w4 --resume": check_resume,
    "fault.layers=[*conv*]": check_conv_layers,
    "--save-faults faults.npz": check_saved_faults,
    "fault=replay fault.file=faults.npz": check_replay,
    "+experiment=robustness --out runs/study": check_study,
    "--launcher slurm": check_slurm,
    "--out runs/bfa command=attack#2": check_rerun_resumes,
}


def checks_for(index: int, examples: list[str]) -> list[Callable[[Sandbox, str, str, Any], None]]:
    out = []
    for key, check in CHECKS.items():
        needle, _, nth = key.partition("#")
        hits = [i for i, e in enumerate(examples) if needle in e]
        if hits[int(nth or 1) - 1:int(nth or 1)] == [index]:
            out.append(check)
    return out


# ------------------------------------------------------------------------------------------------------ tests

def test_examples_found():
    """The extraction sees the README's examples, and every size rule, check and made input names one of them."""
    assert len(EXAMPLES) >= 40 and EXAMPLES[0] == "qfi train", EXAMPLES[:3]
    assert not [e for e in EXAMPLES if "#" in e.split("'")[0]], "a comment was not stripped"
    for key in list(NARROW) + list(CHECKS):
        needle, _, nth = key.partition("#")
        assert len([e for e in EXAMPLES if needle in e]) >= int(nth or 1), f"no README example matches {key!r}"
    assert sum(len(checks_for(i, EXAMPLES)) for i in range(len(EXAMPLES))) == len(CHECKS)
    assert not [name for name, (example, _, _) in MADE.items() if example not in EXAMPLES], "made by no example"


def test_every_input_is_needed_and_made_from_earlier_ones():
    """Each input some example needs; a made input's example needs only inputs listed before it (no cycle)."""
    used = {name for e in EXAMPLES for name in needs(e)}
    assert used == set(INPUTS), set(INPUTS) - used
    for name, (example, _, _) in MADE.items():
        assert all(INPUTS.index(n) < INPUTS.index(name) for n in needs(example)), (name, needs(example))


def test_sized_overrides_are_appended_and_win():
    assert sized(["train", "--epochs", "10"]) == ["train", "--epochs", "10", "device=cpu", *TRAIN]
    assert sized(["train", "model.init=float.pt", "train.epochs=0"])[-2:] == ["device=cpu", "train.limit=64"]
    assert sized(["train", "--out", "r", "--resume"]) == ["train", "--out", "r", "--resume"]
    assert sized(["sweep", "--train", "command=attack"]) == ["sweep", "--train", "command=attack", "device=cpu",
                                                             *TRAIN, *EVAL, *ATTACK]


@pytest.mark.slow
def test_a_broken_example_fails(sandbox, capsys):
    """A misspelled option in a copy of the README makes its example's test fail, naming the example."""
    broken = readme_examples(TEXT.replace("qfi train --wbits 4 --rho 0", "qfi train --wbitz 4 --rho 0"))
    index = broken.index("qfi train --wbitz 4 --rho 0")
    code, output = sandbox.run(broken[index], capsys)
    with pytest.raises(AssertionError, match=re.escape("README example 2 `qfi train --wbitz 4 --rho 0`")):
        assert_ran(sandbox, index, broken[index], code, output)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(EXAMPLES)),
                         ids=[f"{i + 1:02d} {e[4:]}" for i, e in enumerate(EXAMPLES)])
def test_readme_example(index, sandbox, capsys):
    example = EXAMPLES[index]
    code, output = sandbox.run(example, capsys)
    assert_ran(sandbox, index, example, code, output)
    for check in checks_for(index, EXAMPLES):
        check(sandbox, example, output, capsys)


PYTHON_CALL = re.search(r"e\.g\.\s*`(qfi_cli\.train\(.*?\))`", TEXT, flags=re.S)


@pytest.mark.slow
def test_readme_python_call(sandbox, capsys):
    """The README's one-line call of the engine from Python (``qfi_cli.train({...}, "runs/ptq")``), in a sandbox
    holding the user's package."""
    import qfi_cli

    assert PYTHON_CALL, "README's qfi_cli.train(...) example was not found"
    sandbox.prepare("qfi train model._target_=mypkg.nets.MyNet", capsys)
    metrics = eval(PYTHON_CALL.group(1), {"qfi_cli": qfi_cli})
    assert metrics["epochs"] == 0 and (sandbox.work / "runs" / "ptq" / "model.pt").is_file(), metrics

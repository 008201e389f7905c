"""A checkpoint is data: a ``_target_`` its saved config names is imported only when this run names the same one
(``model._target_=X`` on the command line) or passes ``--trust-code`` (``trust_code=true``); a pickle that would
run code is refused."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.engine.train import train
from qfi_cli.errors import QfiError
from qfi_cli.io import load_checkpoint
from qfi_cli.user_code import Trust, named_targets
from tests.helpers import compose, qfi

TINY = ["train.epochs=1", "train.limit=64", "device=cpu"]
EVAL = ["--trials", "1", "eval.limit=50", "device=cpu"]
ATTACK = ["--flips", "1", "attack.random_trials=1", "attack.batch=16", "eval.limit=50", "device=cpu"]
MYNET = "tests.user_models.MyNet"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny digits_cnn run and a tiny run of the user's MyNet (each: model.pt and last.pt)."""
    root = tmp_path_factory.mktemp("runs")
    train(compose([*TINY, "model.width=4"]), root / "builtin")
    train(compose([*TINY, "~model", f"+model._target_={MYNET}", "+model.hidden=4"]), root / "mynet")
    return {"builtin": root / "builtin", "mynet": root / "mynet"}


def tamper(path: Path, marker: Path, section: str, **extra) -> None:
    """Rewrite ``path``'s saved config so that ``section._target_`` is ``os.system`` creating ``marker``."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"][section] = {"_target_": "os.system", "command": f"touch {shlex.quote(str(marker))}"}
    ckpt["config"].update(extra)
    torch.save(ckpt, path)


def one_line_error(code: int, output: str, *needles: str) -> str:
    assert code != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------- a tampered checkpoint

@pytest.mark.parametrize("section", ["model", "data"])
@pytest.mark.parametrize("command", ["inject-eval", "attack", "sensitivity"])
def test_a_checkpoint_naming_code_is_refused_and_nothing_runs(runs, in_tmp, capsys, section, command):
    marker = in_tmp / "pwned"
    ckpt = in_tmp / "model.pt"
    shutil.copy(runs["builtin"] / "model.pt", ckpt)
    tamper(ckpt, marker, section, trust_code=True)  # a saved trust_code is not the user's: ignored
    code, output = qfi(capsys, command, "--checkpoint", str(ckpt), "--out", str(in_tmp / "out"),
                       *(ATTACK if command == "attack" else EVAL))
    line = one_line_error(code, output, f"checkpoint {ckpt} names {section}._target_=os.system: pass "
                                        f"{section}._target_=os.system or --trust-code to import it")
    assert not marker.exists(), line


@pytest.mark.parametrize("section", ["model", "data"])
def test_resuming_a_last_pt_naming_code_is_refused_and_nothing_runs(runs, in_tmp, capsys, section):
    marker = in_tmp / "pwned"
    run = in_tmp / "run"
    shutil.copytree(runs["builtin"], run)
    (run / "model.pt").unlink()  # an interrupted run
    tamper(run / "last.pt", marker, section, trust_code=True)
    code, output = qfi(capsys, "train", "--out", str(run), "--resume", "device=cpu")
    one_line_error(code, output, f"checkpoint {run / 'last.pt'} names {section}._target_=os.system: pass "
                                 f"{section}._target_=os.system or --trust-code to import it")
    assert not marker.exists()
    assert not (run / "model.pt").exists()


def test_a_sweep_over_a_checkpoint_naming_code_fails_its_point_and_nothing_runs(runs, in_tmp, capsys):
    marker = in_tmp / "pwned"
    ckpt = in_tmp / "model.pt"
    shutil.copy(runs["builtin"] / "model.pt", ckpt)
    tamper(ckpt, marker, "model")
    code, output = qfi(capsys, "sweep", "--checkpoint", str(ckpt), "--bers", "1e-3", "--out", str(in_tmp / "sweep"),
                       *EVAL)
    assert code == 2 and "names model._target_=os.system" in output and "Traceback" not in output, output
    assert not marker.exists()


def test_another_target_on_the_command_line_does_not_allow_the_saved_one(runs, in_tmp, capsys):
    marker = in_tmp / "pwned"
    ckpt = in_tmp / "model.pt"
    shutil.copy(runs["builtin"] / "model.pt", ckpt)
    tamper(ckpt, marker, "model")
    code, output = qfi(capsys, "inject-eval", "--checkpoint", str(ckpt), f"model._target_={MYNET}", *EVAL)
    one_line_error(code, output, "names model._target_=os.system")
    assert not marker.exists()


def test_load_checkpoint_trusts_no_target_by_default(runs):
    with pytest.raises(QfiError, match=f"names model._target_={MYNET}"):
        load_checkpoint(runs["mynet"] / "model.pt")
    assert load_checkpoint(runs["builtin"] / "model.pt")["config"]["model"]["name"] == "digits_cnn"
    assert load_checkpoint(runs["mynet"] / "model.pt", trust=Trust({"model._target_": MYNET}))
    assert load_checkpoint(runs["mynet"] / "model.pt", trust=Trust(code=True))
    assert named_targets({"a": [{"b": {"_target_": "x.y"}}]}) == {"a.0.b._target_": "x.y"}


# -------------------------------------------------------------------------------- the user's own model, allowed

def test_a_user_model_checkpoint_is_evaluated_when_named_or_trusted(runs, in_tmp, capsys):
    ckpt = str(runs["mynet"] / "model.pt")
    code, output = qfi(capsys, "inject-eval", "--checkpoint", ckpt, "--out", str(in_tmp / "plain"), *EVAL)
    one_line_error(code, output, f"names model._target_={MYNET}: pass model._target_={MYNET} or --trust-code")
    for name, extra in [("named", [f"model._target_={MYNET}"]), ("trusted", ["--trust-code"]),
                        ("key", ["trust_code=true"])]:
        code, output = qfi(capsys, "inject-eval", "--checkpoint", ckpt, "--out", str(in_tmp / name), *extra, *EVAL)
        assert code == 0, output
        assert (in_tmp / name / "results.json").is_file()
    code, output = qfi(capsys, "attack", "--checkpoint", ckpt, "--out", str(in_tmp / "attack"), "--trust-code",
                       *ATTACK)
    assert code == 0 and (in_tmp / "attack" / "attack.json").is_file(), output
    code, output = qfi(capsys, "sensitivity", "--checkpoint", ckpt, "--out", str(in_tmp / "sens"),
                       f"model._target_={MYNET}", *EVAL)
    assert code == 0 and (in_tmp / "sens" / "sensitivity.csv").is_file(), output


@pytest.mark.parametrize("allow", [f"model._target_={MYNET}", "--trust-code"])
def test_a_user_model_run_resumes_when_named_or_trusted(runs, in_tmp, capsys, allow):
    run = in_tmp / "run"
    shutil.copytree(runs["mynet"], run)
    (run / "model.pt").unlink()
    code, output = qfi(capsys, "train", "--out", str(run), "--resume", "device=cpu")
    one_line_error(code, output, f"names model._target_={MYNET}")
    code, output = qfi(capsys, "train", "--out", str(run), "--resume", allow, "device=cpu")
    assert code == 0, output
    assert (run / "model.pt").is_file()
    assert torch.load(run / "model.pt", weights_only=True)["config"]["model"]["_target_"] == MYNET


def test_refuses_pickle_that_would_run_code(in_tmp):
    marker = in_tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = in_tmp / "evil.pt"
    torch.save({"state_dict": Evil(), "config": {}}, evil)
    result = CliRunner().invoke(app, ["inject-eval", "--checkpoint", str(evil)])
    assert result.exit_code != 0 and "refusing to load" in result.output
    assert not marker.exists(), "loading a checkpoint must never run code"

"""Bad settings, flags, files and environments are one-line errors (no traceback) that name what is wrong, before
anything is written: no model.pt, no results.json, no empty run directory, no half-written file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qfi_cli.cli import app
from tests.helpers import CLI_TINY as TINY
from tests.helpers import one_line_error, qfi


WRONG = [
    ("negative grad_clip", ["train", "train.grad_clip=-1"], "train.grad_clip must be > 0 or null, got -1.0"),
    ("negative lr", ["train", "train.lr=-0.1"], "train.lr must be >= 0, got -0.1"),
    ("NaN lr", ["train", "train.lr=nan"], "train.lr must be a finite number, got nan"),
    ("momentum out of range", ["train", "train.momentum=-0.5"], "train.momentum must lie in [0, 1)"),
    ("negative weight decay", ["train", "train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    ("negative rho", ["train", "--rho", "-0.1"], "sam.rho must be >= 0"),
    ("NaN rho", ["train", "--rho", "nan"], "--rho must be a finite number, got nan"),
    ("negative eta", ["train", "sam.eta=-1"], "sam.eta must be >= 0"),
    ("count model with a rate", ["inject-eval", "fault.model=bitflip_count", "--ber", "1e-3"],
     "flips exactly fault.count bits, so a rate does not apply"),
    ("underflowing rate", ["inject-eval", "--ber", "1e-400"], "--ber=1e-400 is too small for a double"),
    ("a key nothing reads", ["sweep", "--train", "+foo=1"], "unknown setting foo: no part of qfi reads it"),
    ("an experiment that does not exist", ["sweep", "--train", "+experiment=nope"], "unknown experiment 'nope'"),
]


@pytest.mark.parametrize("case,args,message", WRONG, ids=[w[0] for w in WRONG])
def test_settings_that_gave_silently_wrong_numbers_are_errors(case, args, message, outputs, capsys):
    line = one_line_error(*qfi(capsys, *args, *TINY))
    assert message in line, line
    assert not list(outputs.rglob("model.pt")) and not list(outputs.rglob("results.json"))


TRACEBACKS = [
    ("null rate", ["inject-eval", "fault.ber=null"], "ber must be set"),
    ("seed of 2**64", ["train", f"--seed={2**64}"], "seed must lie in 0..2**63-1"),
    ("fault seed of 2**64", ["inject-eval", f"--seed={2**64}"], "eval.fault_seed must lie in 0..2**63-1"),
    ("nesterov without momentum", ["train", "train.nesterov=true", "train.momentum=0"],
     "train.nesterov=true needs train.momentum > 0"),
    ("train.limit=0", ["train", "train.limit=0"], "train.limit must be >= 1 or null"),
    ("eval.limit=0", ["inject-eval", "eval.limit=0"], "eval.limit must be >= 1 or null"),
    ("empty bits", ["inject-eval", "fault.bits=[]"], "fault.bits must name at least one bit position"),
    ("a bit that is no number", ["inject-eval", "fault.bits=[a]"], "fault.bits[0] must be a whole number, got 'a'"),
    ("device mps", ["train", "device=mps"], "unknown device 'mps': use auto, cpu or cuda[:N]"),
    ("device meta", ["train", "device=meta"], "unknown device 'meta'"),
    ("LeNet-5 on 8x8 digits", ["train", "--model", "lenet5"], "lenet5 needs 28x28 inputs"),
]


@pytest.mark.parametrize("case,args,message", TRACEBACKS, ids=[t[0] for t in TRACEBACKS])
def test_inputs_that_gave_tracebacks_are_one_line_errors(case, args, message, trained_digits, outputs, capsys):
    extra = ["--checkpoint", str(trained_digits[0])] if args[0] == "inject-eval" else []
    base = ["train.epochs=1", "train.limit=64", "device=cpu"]  # before the case's own settings, which win
    line = one_line_error(*qfi(capsys, args[0], *base, *extra, *args[1:]))
    assert message in line, line
    assert not list(outputs.rglob("model.pt")) and not list(outputs.rglob("results.json"))
    assert not [p for p in outputs.rglob("*") if p.is_dir() and not any(p.iterdir())], "no empty run directory"


ENVIRONMENT = [
    ("QFI_OUTPUTS is a file", "QFI_OUTPUTS", "file", ["train", "--out", "ok"],
     "choose another outputs root (paths.root or QFI_OUTPUTS)"),
    ("paths.root is a file", None, "file", ["train", "paths.root=file"], "cannot write to file"),
    ("latest_checkpoint.txt is not UTF-8", None, None, ["inject-eval"], "latest_checkpoint.txt is unreadable"),
]


@pytest.mark.parametrize("case,var,where,args,message", ENVIRONMENT, ids=[e[0] for e in ENVIRONMENT])
def test_unusable_outputs_roots(case, var, where, args, message, outputs, monkeypatch, capsys):
    Path("file").write_text("not a directory")
    if var:
        monkeypatch.setenv(var, str(outputs / where))
    if "inject-eval" in args:
        Path("outputs").mkdir()
        Path("outputs/latest_checkpoint.txt").write_bytes(b"\xff\xfe\xfa model")
    line = one_line_error(*qfi(capsys, *args, *TINY))
    assert message in line, line
    assert not list(outputs.rglob("model.pt"))


def test_a_full_disk_is_a_one_line_error_and_leaves_no_half_written_file(outputs, monkeypatch, capsys):
    import errno

    real = os.fsync

    def full(fd):
        real(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--epochs", "1", *TINY))
    assert "No space left on device" in line, line
    assert not list(Path("D").glob("*.pt")) and not list(Path("D").glob(".*.tmp"))


@pytest.mark.parametrize("flag", ["--hydra-help", "--shell-completion"])
def test_hydra_flags_qfi_does_not_pass_are_one_line_errors(flag, outputs, capsys):
    line = one_line_error(*qfi(capsys, "train", flag))
    assert f"has no option {flag}" in line


MESSAGES = [
    ("an option of another command", ["inject-eval", "--epochs", "3"],
     "qfi inject-eval has no option --epochs (see qfi inject-eval --help)"),
    ("an unknown option", ["train", "--speed", "fast"], "qfi train has no option --speed"),
    ("a hexadecimal float", ["inject-eval", "--ber", "0x1p-10"], "--ber must be a number, got '0x1p-10'"),
    ("a bad integer", ["train", "--epochs", "many"], "qfi train: Invalid value for '--epochs'"),
    ("--checkpoint a directory without model.pt", ["inject-eval", "--checkpoint", "."],
     "is a directory without model.pt"),
]


@pytest.mark.parametrize("case,args,message", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_messages_name_the_option_and_the_command(case, args, message, outputs, capsys):
    line = one_line_error(*qfi(capsys, *args))
    assert message in line, line


def test_no_empty_log_and_no_leftovers_from_a_failed_run(outputs, capsys):
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "1", *TINY)
    assert code == 0, out
    assert not list(Path("D").glob("*.log")), "no qfi.log that stays empty"
    assert Path("D/.hydra/config.yaml").is_file()
    one_line_error(*qfi(capsys, "train", "--model", "lenet5", *TINY))
    assert not (outputs / "outputs" / "train").exists() or not any((outputs / "outputs" / "train").iterdir())


runner = CliRunner()


def _bad_checkpoints(tmp: Path, good: Path) -> dict[str, Path]:
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"this is no checkpoint\n" * 100)
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    mismatch = tmp / "mismatch.pt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["config"]["model"]["width"] = 5  # weights of width 8, config of width 5
    torch.save(ckpt, mismatch)
    not_qfi = tmp / "not_qfi.pt"
    torch.save({"weights": torch.zeros(3)}, not_qfi)
    return {"corrupt": corrupt, "truncated": truncated, "mismatch": mismatch, "not_qfi": not_qfi}


BAD = [
    ("ber above 1", ["inject-eval", "--ber", "1.5"], "ber must lie in [0, 1]"),
    ("ber below 0", ["inject-eval", "--ber", "-1e-3"], "ber must lie in [0, 1]"),
    ("trials 0", ["inject-eval", "--trials", "0"], "trials must be >= 1"),
    ("wbits 9", ["train", "--wbits", "9"], "2..8 or 32"),
    ("abits 1", ["train", "--abits", "1"], "2..8 or 32"),
    ("unknown model", ["train", "--model", "vgg99"], "unknown model 'vgg99'"),
    ("unknown model name", ["train", "model.name=vgg99"], "unknown model 'vgg99'"),
    ("unknown data set", ["train", "--dataset", "imagenet"], "unknown data set 'imagenet'"),
    ("unknown fault config", ["inject-eval", "fault=gamma_rays"], "unknown fault model 'gamma_rays'"),
    ("unknown fault model", ["inject-eval", "fault.model=gamma_rays"], "unknown fault model 'gamma_rays'"),
    ("unknown launcher", ["sweep", "--launcher", "kubernetes"], "unknown launcher 'kubernetes'"),
    ("missing checkpoint", ["inject-eval", "--checkpoint", "{tmp}/nope.pt"], "checkpoint not found"),
    ("no trained model yet", ["inject-eval"], "no trained model recorded"),
    ("corrupt checkpoint", ["inject-eval", "--checkpoint", "{corrupt}"], "corrupt or unreadable"),
    ("truncated checkpoint", ["inject-eval", "--checkpoint", "{truncated}"], "corrupt or unreadable"),
    ("not a qfi checkpoint", ["inject-eval", "--checkpoint", "{not_qfi}"], "not a qfi checkpoint"),
    ("architecture mismatch", ["inject-eval", "--checkpoint", "{mismatch}"], "does not match its model config"),
    ("model override vs checkpoint", ["inject-eval", "--checkpoint", "{good}", "model=lenet5"],
     "was trained with model.name=digits_cnn, not lenet5"),
    ("missing data root", ["train", "--dataset", "mnist", "data.root={tmp}/no_data"], "mnist not found under"),
    ("unwritable output", ["train", "--out", "{tmp}/a_file/run"], "cannot write to"),
    ("malformed override", ["train", "train.lr=[0.1"], "malformed override"),
    ("unknown key", ["train", "train.learning_rate=0.1"], "Could not override 'train.learning_rate'"),
    ("wrong type", ["train", "train.lr=fast"], "train.lr must be a number"),
    ("resume without out", ["train", "--resume"], "--resume needs --out"),
    ("resume with nothing to resume", ["train", "--resume", "--out", "{tmp}/empty"], "nothing to resume"),
]


@pytest.mark.parametrize("case,args,message", BAD, ids=[b[0] for b in BAD])
def test_user_mistakes_give_one_line_and_nonzero_exit(case, args, message, in_tmp, trained_digits):
    paths = {"tmp": str(in_tmp), "good": str(trained_digits[0])}
    paths.update({k: str(v) for k, v in _bad_checkpoints(in_tmp, trained_digits[0]).items()})
    (in_tmp / "a_file").write_text("x")
    result = runner.invoke(app, [a.format(**paths) for a in args])
    output = result.output.strip()
    assert result.exit_code != 0, output
    assert message in output, output
    assert "Traceback" not in output and len(output.splitlines()) <= 2, output
    assert not list(in_tmp.rglob("results.json")) and not list(in_tmp.rglob("model.pt"))

"""Reliability, round two (issue 9): resume that cannot relabel a model, no silently wrong numbers, no tracebacks,
messages that say what is wrong. One parametrized test per section, with every input the issue lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qfi_cli.io import write_json
from tests.helpers import killed_after, qfi
from tests.test_data import write_mnist

TINY = ["train.limit=256", "model.width=4", "device=cpu", "eval.batch_size=450"]


def one_line_error(code: int, output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2, output
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = state(a), state(b)
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFI_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path


# ------------------------------------------------------------------------------------------- 1. resume

RESUME = [
    # (case, first run's flags, flags given with --resume, the uninterrupted run to compare with)
    ("bare --resume continues the saved epochs", ["--epochs", "4"], [], ["--epochs", "4"]),
    ("bare --resume continues 4-bit, seed 3", ["--epochs", "4", "--wbits", "4", "--seed", "3"], ["--epochs", "4"],
     ["--epochs", "4", "--wbits", "4", "--seed", "3"]),
    ("README: minmax per-channel run resumed bare", ["--epochs", "3", "quant=minmax", "quant.per_channel=true"], [],
     ["--epochs", "3", "quant=minmax", "quant.per_channel=true"]),
]


@pytest.mark.parametrize("case,first,again,straight", RESUME, ids=[r[0] for r in RESUME])
def test_resume_continues_the_saved_run(case, first, again, straight, outputs, monkeypatch, capsys):
    killed_after(monkeypatch, 2)
    assert qfi(capsys, "train", "--out", "D", *first, *TINY)[0] == 130  # interrupted
    monkeypatch.undo()
    monkeypatch.chdir(outputs)
    monkeypatch.setenv("QFI_OUTPUTS", str(outputs / "outputs"))
    assert Path("D/last.pt").is_file() and not Path("D/model.pt").exists()
    code, out = qfi(capsys, "train", "--out", "D", "--resume", *again, *TINY)
    assert code == 0, out
    assert "resuming from epoch 2" in out
    code, out = qfi(capsys, "train", "--out", "S", *straight, *TINY)
    assert code == 0, out
    assert same_weights(Path("D/model.pt"), Path("S/model.pt"))
    resumed, plain = (json.loads(Path(d, "metrics.json").read_text()) for d in ("D", "S"))
    assert resumed["history"] == plain["history"] and resumed["epochs"] == plain["epochs"]
    saved = torch.load("D/model.pt", weights_only=True)["config"]
    assert saved == torch.load("S/model.pt", weights_only=True)["config"] | {"resume": True}


REFUSED = [
    ("contradicting flags on a finished run", ["--resume", "--epochs", "4", "--wbits", "4", "train.lr=0.5"],
     "D: it holds a finished run"),
    ("--resume --epochs 3 on a finished run", ["--resume", "--epochs", "3"], "D: it holds a finished run"),
    ("a new run into a finished run's directory", [], "D already holds a finished run (model.pt)"),
]


@pytest.mark.parametrize("case,args,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_finished_run_is_never_overwritten_or_relabelled(case, args, message, outputs, capsys):
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "2", *TINY)
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in Path("D").rglob("*") if p.is_file()}
    line = one_line_error(*qfi(capsys, "train", "--out", "D", *args, *TINY))
    assert message in line, line
    after = {p.name: p.read_bytes() for p in Path("D").rglob("*") if p.is_file()}
    assert after == before, "model.pt, metrics.json and .hydra/ must be left as they were"


def test_a_contradicting_flag_names_the_key_and_overwrite_is_explicit(outputs, monkeypatch, capsys):
    killed_after(monkeypatch, 1)
    assert qfi(capsys, "train", "--out", "D", "--epochs", "3", "--wbits", "4", *TINY)[0] == 130
    monkeypatch.undo()
    monkeypatch.chdir(outputs)
    monkeypatch.setenv("QFI_OUTPUTS", str(outputs / "outputs"))
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--resume", "--wbits", "8", *TINY))
    assert "quant.wbits=8 contradicts its quant.wbits=4" in line, line
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--resume", "quant=minmax", *TINY))
    assert "quant.name=minmax contradicts its quant.name=lsq" in line, line
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--epochs", "3", *TINY))
    assert "holds an interrupted run" in line and "--resume" in line, line
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "1", "--overwrite", *TINY)
    assert code == 0, out
    assert torch.load("D/model.pt", weights_only=True)["config"]["train"]["epochs"] == 1


# ------------------------------------------------------------------------------------------- 2. silently wrong numbers

def test_layer_patterns_are_whole_strings(trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    sizes = {n: m.weight.numel() * m.wbits for n, m in _layers(checkpoint)}
    for pattern, expected in (("conv*", sum(v for k, v in sizes.items() if k.startswith("conv"))),
                              ("conv1", sizes["conv1"]), ("[conv1,fc]", sizes["conv1"] + sizes["fc"]),
                              ("[*conv*]", sum(v for k, v in sizes.items() if "conv" in k))):
        code, out = qfi(capsys, "inject-eval", "--checkpoint", str(checkpoint), "--trials", "1", "--out", "E",
                        f"fault.layers={pattern}")
        assert code == 0, out
        assert json.loads(Path("E/results.json").read_text())["bits_total"] == expected, pattern
    for pattern in ("1*", "37", "12"):  # one pattern each, matching no layer of the named model
        line = one_line_error(*qfi(capsys, "inject-eval", "--checkpoint", str(checkpoint),
                                   f"fault.layers={pattern}"))
        assert f"fault.layers ['{pattern}'] match no quantized layer" in line and "conv1" in line, line


def _layers(checkpoint):
    from qfi_cli.engine.evaluate import load_trained
    from qfi_cli.quant import quantized_layers

    return quantized_layers(load_trained(checkpoint, torch.device("cpu"))[0])


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


def test_a_float_model_is_faulted_in_its_ieee_bits(outputs, capsys):
    """A 32-bit (float) model is not 'perfectly robust': its weights are stored as fp32 and their bits fail."""
    assert qfi(capsys, "train", "--out", "F", "--wbits", "32", "--epochs", "1", "quant.first_last_bits=null",
               *TINY)[0] == 0
    code, out = qfi(capsys, "inject-eval", "--checkpoint", "F/model.pt", "--ber", "1e-3", "--trials", "2",
                    "--out", "E")
    assert code == 0, out
    res = json.loads(Path("E/results.json").read_text())
    n = sum(m.weight.numel() for _, m in _layers(Path("F/model.pt")))
    assert res["bits_total"] == 32 * n and all(f > 0 for f in res["flips"])
    code, out = qfi(capsys, "inject-eval", "--checkpoint", "F/model.pt", "fault=count", "fault.count=5",
                    "--trials", "2", "--out", "C")
    assert code == 0, out
    res = json.loads(Path("C/results.json").read_text())
    assert res["flips"] == [5, 5] and res["ber"] is None and res["count"] == 5


def test_results_are_strict_json_and_report_refuses_invalid_files(trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    code, out = qfi(capsys, "sweep", "--checkpoint", str(checkpoint), "--bers", "1e-3", "--trials", "2",
                    "--out", "S", "fault.layers=[conv1],[nomatch*]")
    assert code == 2 and "1 of 2 sweep point(s) failed" in out, out

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    files = list(Path("S").rglob("results.json"))
    assert len(files) == 2 and all(isinstance(strict(p.read_text()), dict) for p in files)
    write_json(Path("S/extra/results.json"), {"status": "ok", "ber": "x"})
    write_json(Path("S/list/results.json"), [1, 2])
    code, out = qfi(capsys, "report", "S")
    assert code == 0 and "Traceback" not in out, out
    status = {r["dir"]: r["status"] for r in __import__("csv").DictReader(open("S/summary.csv"))}
    assert status["extra"] == "invalid" and status["list"] in ("invalid", "unreadable"), status


# ------------------------------------------------------------------------------------------- 3. no tracebacks

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


def test_a_single_bit_position_is_a_list_of_one(trained_digits, outputs, capsys):
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(trained_digits[0]), "--trials", "1", "--out", "E",
                    "fault.bits=5", "--ber", "0.5")
    assert code == 0, out
    assert json.loads(Path("E/results.json").read_text())["fault"]["bits"] == [5]


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


HYDRA_FLAGS = [
    ("sweep --cfg job", ["sweep", "--bers", "1e-4,1e-3", "--cfg", "job"], "eval:"),
    ("sweep --info", ["sweep", "--info"], "Config search path"),
    ("train --cfg job", ["train", "--cfg", "job", "quant.wbits=4"], "wbits: 4"),
]


@pytest.mark.parametrize("case,args,expected", HYDRA_FLAGS, ids=[h[0] for h in HYDRA_FLAGS])
def test_hydras_own_flags_pass_through(case, args, expected, outputs, capsys):
    code, out = qfi(capsys, *args)
    assert code == 0 and expected in out and "Traceback" not in out, out
    assert "exclude_keys" not in out, "no internal override leaks"


@pytest.mark.parametrize("flag", ["--hydra-help", "--shell-completion"])
def test_hydra_flags_qfi_does_not_pass_are_one_line_errors(flag, outputs, capsys):
    line = one_line_error(*qfi(capsys, "train", flag))
    assert f"has no option {flag}" in line


# ------------------------------------------------------------------------------------------- 4. messages

ODD_PATHS = ["ü run", "til~de", "it's", 'quo"te', "br[ack]et", "a=b", "com,ma", "${oc.env:HOME}"]


@pytest.mark.parametrize("name", ODD_PATHS)
def test_out_paths_are_taken_literally(name, outputs, capsys):
    code, out = qfi(capsys, "train", "--out", name, "--epochs", "1", *TINY)
    assert code == 0, out
    assert (outputs / name / "model.pt").is_file()


def test_data_root_with_a_tilde_is_the_home_directory(outputs, monkeypatch, capsys):
    """README's `data.root=~/data`: the tilde is the user's home directory."""
    monkeypatch.setenv("HOME", str(outputs / "home"))
    write_mnist(outputs / "home" / "data", "MNIST", np.random.default_rng(0), n_train=70, n_test=30)
    code, out = qfi(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "data.root=~/data", "--epochs", "1",
                    "--out", "M", "device=cpu")
    assert code == 0, out
    assert torch.load("M/model.pt", weights_only=True)["config"]["data"]["root"] == str(outputs / "home" / "data")


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


def test_checkpoint_directory_means_its_model(trained_digits, outputs, capsys):
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(trained_digits[0].parent), "--trials", "1",
                    "--out", "E")
    assert code == 0, out
    assert json.loads(Path("E/results.json").read_text())["checkpoint"] == str(trained_digits[0].resolve())


def test_no_empty_log_and_no_leftovers_from_a_failed_run(outputs, capsys):
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "1", *TINY)
    assert code == 0, out
    assert not list(Path("D").glob("*.log")), "no qfi.log that stays empty"
    assert Path("D/.hydra/config.yaml").is_file()
    one_line_error(*qfi(capsys, "train", "--model", "lenet5", *TINY))
    assert not (outputs / "outputs" / "train").exists() or not any((outputs / "outputs" / "train").iterdir())


def test_help_shows_defaults_and_version(capsys):
    code, out = qfi(capsys, "train", "--help")
    assert code == 0 and "[default: (8)]" in out and "[default: (15)]" in out, out
    code, out = qfi(capsys, "--version")
    from qfi_cli import __version__

    assert code == 0 and out.strip() == f"qfi {__version__}"


def test_long_runs_print_a_bounded_number_of_lines_with_the_time_left(capsys):
    from qfi_cli.progress import Reporter

    with Reporter(live=False).task("inject-eval", total=100_000) as advance:
        for t in range(100_000):
            advance(1, f"trial {t + 1}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert 20 <= len(lines) <= 21 and all(" left)" in line for line in lines), lines[:3]

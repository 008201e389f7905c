"""The CLI takes inputs as written: layer patterns as whole strings, one bit position as a list of one, odd
``--out`` names literally, ``~`` as the home directory, a checkpoint directory as its model.pt, Hydra's own flags
passed through; ``--help`` shows defaults, and long runs print a bounded number of progress lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import CLI_TINY as TINY
from tests.helpers import checkpoint_layers, one_line_error, qfi
from tests.test_data import write_mnist


def test_layer_patterns_are_whole_strings(trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    sizes = {n: m.weight.numel() * m.wbits for n, m in checkpoint_layers(checkpoint)}
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


def test_a_single_bit_position_is_a_list_of_one(trained_digits, outputs, capsys):
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(trained_digits[0]), "--trials", "1", "--out", "E",
                    "fault.bits=5", "--ber", "0.5")
    assert code == 0, out
    assert json.loads(Path("E/results.json").read_text())["fault"]["bits"] == [5]


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


def test_checkpoint_directory_means_its_model(trained_digits, outputs, capsys):
    code, out = qfi(capsys, "inject-eval", "--checkpoint", str(trained_digits[0].parent), "--trials", "1",
                    "--out", "E")
    assert code == 0, out
    assert json.loads(Path("E/results.json").read_text())["checkpoint"] == str(trained_digits[0].resolve())


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

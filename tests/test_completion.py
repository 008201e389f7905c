"""Shell completion through Typer: qfi --show-completion / --install-completion, and the completions themselves."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qfi_cli.cli import app

runner = CliRunner()


@pytest.fixture
def shell_named(monkeypatch, tmp_path):
    """Typer takes the shell as the option's value instead of detecting it; HOME is a scratch directory."""
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_help_lists_the_completion_options():
    result = runner.invoke(app, ["--help"], prog_name="qfi")
    assert result.exit_code == 0
    assert "--install-completion" in result.output and "--show-completion" in result.output


@pytest.mark.parametrize("shell, line", [("bash", "complete -o default -F _qfi_completion qfi"),
                                         ("zsh", "#compdef qfi"), ("fish", "complete --command qfi")])
def test_show_completion_prints_a_script_for_qfi(shell_named, shell, line):
    result = runner.invoke(app, ["--show-completion", shell], prog_name="qfi")
    assert result.exit_code == 0, result.output
    assert line in result.output and "_QFI_COMPLETE" in result.output


def test_install_completion_writes_the_bash_script(shell_named):
    result = runner.invoke(app, ["--install-completion", "bash"], prog_name="qfi")
    assert result.exit_code == 0, result.output
    script = shell_named / ".bash_completions" / "qfi.sh"
    assert "_QFI_COMPLETE=complete_bash" in script.read_text()
    assert f"source '{script}'" in (shell_named / ".bashrc").read_text()


@pytest.mark.parametrize("words, cword, expected", [("qfi sw", 1, ["sweep"]),
                                                    ("qfi sweep --la", 2, ["--launcher"]),
                                                    ("qfi inject-eval --b", 2, ["--ber", "--bers"])])
def test_bash_completes_commands_and_options(words, cword, expected):
    env = {"_QFI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = runner.invoke(app, [], prog_name="qfi", env=env)
    assert result.exit_code == 0, result.output
    assert result.output.split() == expected

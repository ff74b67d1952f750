"""`swiftbolt-ml COMMAND`: one console command over the jobs, each command the same as its `python -m` twin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ml.src.cli import main as console

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in console.COMMANDS.items():
        assert f"  {name} " in out and f"python -m {command.python_m}" in out
    assert console.main([]) == 2
    assert console.main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown command 'trian'; one of: " + ", ".join(console.COMMANDS) + " (see --help)"]


@pytest.mark.parametrize("name", sorted(console.COMMANDS))
def test_each_command_is_its_python_m_entry_point(name: str) -> None:
    """Same flags, same help, same exit code: `swiftbolt-ml NAME --help` is `python -m MODULE --help`."""
    command = console.COMMANDS[name]
    script = Path(sys.executable).with_name("swiftbolt-ml")
    via_console = subprocess.run([str(script), name, "--help"], capture_output=True, text=True, cwd=REPO)
    via_python_m = subprocess.run(
        [sys.executable, "-m", command.python_m, "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert via_console.returncode == via_python_m.returncode == 0
    assert via_console.stdout == via_python_m.stdout
    assert "--help" in via_console.stdout


def test_a_bad_flag_exits_2_through_the_console_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert console.main(["train", "--timeframes", "d2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

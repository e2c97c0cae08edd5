"""The command line as a user meets it: help everywhere, version, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mira import __version__
from mira.cli.root import app, register_commands

register_commands()
runner = CliRunner()


def command_paths() -> list[list[str]]:
    """Every command and sub-command of ``mira``."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: Any, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(
            command, "commands", {}
        ).items():  # groups, whatever click they use
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


def test_all_commands_are_registered() -> None:
    names = {" ".join(p) for p in command_paths()}
    assert {
        "sample-data",
        "run",
        "demo",
        "deid",
        "phi-scan",
        "convert",
        "ls",
        "catalog query",
        "review accept",
        "split",
        "snapshot create",
        "snapshot verify",
        "serve",
    } <= names


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "mira")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    # A docstring sentence beyond the usage line.
    assert len(result.output.strip().splitlines()) > 3


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_bad_usage_exits_2() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["sample-data", "x", "--patients", "zero"])
    assert result.exit_code == 2


def test_expected_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Run the real console script: an expected error prints one line, no traceback."""
    mira = Path(sys.executable).with_name("mira")
    result = subprocess.run(
        [str(mira), "--gateway", str(tmp_path / "gw"), "run", "/not/in/the/dropzone/batch-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "drop zone" in lines[0]

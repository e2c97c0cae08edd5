"""Every command's --help reads cleanly: flags show no value type after them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# One interpreter prints the help of every command (mira, each group, each sub-command), as
# main() builds it, so the test costs one start-up, not thirty.
HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, typer
from mira.cli import app, register_commands
from mira.cli.root import plain_flags
register_commands()
root = plain_flags(typer.main.get_command(app))
helps, stack = {}, [([], root)]
while stack:
    path, command = stack.pop()
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        root.main(args=[*path, "--help"], prog_name="mira", standalone_mode=True)
    helps[" ".join(path) or "mira"] = text.getvalue()
    stack += [([*path, n], c) for n, c in getattr(command, "commands", {}).items()]
print(json.dumps(helps))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", HELP_OF_EVERY_COMMAND],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


def test_every_command_has_help(helps: dict[str, str]) -> None:
    assert {"mira", "run", "deid", "catalog query", "snapshot verify", "review accept"} <= set(
        helps
    )
    assert all("Show this message and exit." in text for text in helps.values())


def test_help_shows_no_type_after_flags(helps: dict[str, str]) -> None:
    flagged = [name for name, text in helps.items() if "<bool>" in text]
    assert not flagged, flagged

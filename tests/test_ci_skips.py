"""Under CI=true a skipped test fails the run; elsewhere a skip stays a skip (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_skipping_test(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_something.py"
    test.write_text(
        "import pytest\n\n"
        "def test_needs_a_package():\n"
        "    pytest.skip('some system package is not installed')\n"
    )
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("ci", "code", "line"), [("true", 1, "1 failed"), ("", 0, "1 skipped")])
def test_a_skip_fails_only_under_ci(tmp_path: Path, ci: str, code: int, line: str) -> None:
    result = run_skipping_test(tmp_path, ci)
    assert result.returncode == code, result.stdout + result.stderr
    assert line in result.stdout
    if ci:
        assert "skipped under CI=true" in result.stdout
        assert "some system package is not installed" in result.stdout

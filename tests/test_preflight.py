"""Errors before work starts: one line, exit 1, no server started; flow logs without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.prefect_server import PrefectTestServer

pytest_plugins = ["tests.prefect_fixtures"]

SECRET = "a-throwaway-test-secret-of-32-bytes"


def mira(
    tmp_path: Path, *args: str, secret: str | None = SECRET
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MIRA_GATEWAY_URL": str(tmp_path / "gateway"),
        "MIRA_RESEARCH_URL": str(tmp_path / "research"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": "",
    }
    env.pop("MIRA_DEID_SECRET", None)
    if secret is not None:
        env["MIRA_DEID_SECRET"] = secret
    command = [sys.executable, "-c", "from mira.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def no_server_was_started(tmp_path: Path) -> bool:
    """An ephemeral Prefect server leaves its SQLite database under PREFECT_HOME."""
    return not list((tmp_path / "prefect-home").rglob("*.db"))


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (SECRET, "no batch 'nosuch' in "),
        (None, "no de-identification secret"),
        ("short", "at least 16 bytes"),
    ],
)
def test_run_fails_in_one_line_before_any_server(
    tmp_path: Path, secret: str | None, message: str
) -> None:
    (tmp_path / "gateway" / "dropzone" / "other").mkdir(parents=True)
    (tmp_path / "gateway" / "dropzone" / "other" / "_READY").touch()
    (tmp_path / "gateway" / "dropzone" / "other" / "a.dcm").write_bytes(b"x")
    result = mira(tmp_path, "run", "nosuch", secret=secret)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert no_server_was_started(tmp_path)


def test_a_missing_batch_names_the_ready_ones(tmp_path: Path) -> None:
    (tmp_path / "gateway" / "dropzone" / "ready-one").mkdir(parents=True)
    (tmp_path / "gateway" / "dropzone" / "ready-one" / "_READY").touch()
    (tmp_path / "gateway" / "dropzone" / "ready-one" / "a.dcm").write_bytes(b"x")
    result = mira(tmp_path, "run", "nosuch")
    assert "ready batches: ready-one" in result.stdout + result.stderr


def test_a_batch_still_uploading_is_refused_before_work(tmp_path: Path) -> None:
    (tmp_path / "gateway" / "dropzone" / "half").mkdir(parents=True)
    (tmp_path / "gateway" / "dropzone" / "half" / "a.dcm").write_bytes(b"x")
    result = mira(tmp_path, "run", "half")
    assert result.returncode == 1 and "is not ready" in result.stdout + result.stderr
    assert no_server_was_started(tmp_path)


@pytest.mark.prefect
def test_an_expected_error_is_one_line_in_the_run_log(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from flows.params import StoreParams
    from flows.pipeline import pipeline

    monkeypatch.setenv("MIRA_DEID_SECRET", SECRET)
    (tmp_path / "gateway" / "dropzone").mkdir(parents=True)
    stores = StoreParams(gateway_url=str(tmp_path / "gateway"), research_url=str(tmp_path / "r"))
    state = pipeline("nosuch", stores, return_state=True)
    assert state.is_failed() and "no batch 'nosuch'" in (state.message or "")
    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    text = "\n".join(log.message for log in logs)
    assert "no batch 'nosuch'" in text
    assert "Traceback" not in text, text

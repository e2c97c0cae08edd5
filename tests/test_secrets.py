"""Secrets stay secret: the de-identification key and the S3 keys reach mira from the environment
or files, and a pipeline run against the real Prefect server leaves them nowhere else: not in
Prefect's database, the server's and worker's logs, this process's logs, the command's output,
the webhook payloads, the error messages of runs that fail."""

from __future__ import annotations

import logging
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from mira.settings import Settings
from storage import open_store
from tests.prefect_server import PrefectTestServer
from tests.seaweedfs import SeaweedServer

if TYPE_CHECKING:
    from tests.prefect_fixtures import Receiver

pytest_plugins = ["tests.prefect_fixtures"]

pytestmark = [pytest.mark.prefect, pytest.mark.s3, pytest.mark.slow]

BUCKET = "mira-secrets"
DEID_SECRET = f"deid-{secrets.token_hex(24)}"
ACCESS_KEY = f"AKMIRA{secrets.token_hex(6).upper()}"
SECRET_KEY = f"sk-{secrets.token_hex(20)}"
WRONG_SECRET_KEY = f"wrong-{secrets.token_hex(20)}"
SHORT_SECRET = f"s{secrets.token_hex(3)}"  # too short: refused, and never echoed


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server whose only credentials are this module's random keys."""
    folder = tmp_path_factory.mktemp("seaweedfs-secrets")
    with SeaweedServer(folder, access_key=ACCESS_KEY, secret_key=SECRET_KEY) as server:
        server.create_bucket(BUCKET)
        yield server


def found_in(text: bytes | str, where: str, needles: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{name} in {where}" for name, value in needles.items() if value.encode() in data]


def test_a_pipeline_run_leaves_no_secret_behind(
    keyed_server: SeaweedServer,
    prefect_server: PrefectTestServer,
    prefect_api: str,
    webhook_receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mira.cli.common import out
    from tasks.sample.generate import generate_sample_data

    monkeypatch.setattr(out, "width", 250)
    register_commands()
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    secret_file = tmp_path / "deid.key"
    secret_file.write_text(DEID_SECRET + "\n")
    secret_file.chmod(0o600)
    key_file = tmp_path / "s3.key"
    key_file.write_text(SECRET_KEY + "\n")
    env = {
        "MIRA_GATEWAY_URL": f"{prefix}/gateway",
        "MIRA_RESEARCH_URL": f"{prefix}/research",
        "MIRA_S3_ENDPOINT_URL": str(keyed_server.config.endpoint_url),
        "MIRA_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "MIRA_S3_SECRET_ACCESS_KEY_FILE": str(key_file),
        "MIRA_S3_REGION": "us-east-1",
        "MIRA_DEID_SECRET_FILE": str(secret_file),
        "MIRA_WEBHOOK_URLS": webhook_receiver.url,
        "MIRA_DASK_WORKERS": "1",
    }
    for name in ("MIRA_DEID_SECRET", "MIRA_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    gateway = Settings().gateway()
    sample = tmp_path / "sample"
    generate_sample_data(sample, patients=1, slides=0)
    for path in sorted((sample / "batch-0001-radiology").rglob("*")):
        if path.is_file():
            gateway.write_bytes(
                f"dropzone/{path.relative_to(sample).as_posix()}", path.read_bytes()
            )

    caplog.set_level(logging.INFO)  # what --verbose shows
    runner = CliRunner()
    ran = runner.invoke(app, ["--verbose", "run", "batch-0001-radiology"])
    assert ran.exit_code == 0, ran.output
    assert "pipeline summary" in ran.output
    outputs = [("mira run output", ran.output)]
    # Runs that fail: a wrong S3 secret, a de-identification secret too short.
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY", WRONG_SECRET_KEY)
    monkeypatch.delenv("MIRA_S3_SECRET_ACCESS_KEY_FILE")
    denied = runner.invoke(app, ["run", "batch-0001-radiology"])
    assert denied.exit_code != 0
    outputs.append(("failed run output", denied.output + str(denied.exception)))
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY_FILE", str(key_file))
    monkeypatch.delenv("MIRA_S3_SECRET_ACCESS_KEY")
    monkeypatch.delenv("MIRA_DEID_SECRET_FILE")
    monkeypatch.setenv("MIRA_DEID_SECRET", SHORT_SECRET)
    short = runner.invoke(app, ["run", "batch-0001-radiology"])
    assert short.exit_code != 0
    outputs.append(("short-secret run output", short.output + str(short.exception)))
    assert "at least" in outputs[-1][1]
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)

    assert webhook_receiver.accepted, "the pipeline's end was announced"
    needles = {
        "the de-identification secret": DEID_SECRET,
        "the S3 secret key": SECRET_KEY,
        "the wrong S3 secret key": WRONG_SECRET_KEY,
        "the short secret": SHORT_SECRET,
        "the S3 access key id": ACCESS_KEY,
    }
    leaks: list[str] = []
    for where, text in outputs:
        leaks += found_in(text, where, needles)
    leaks += found_in(caplog.text, "this process's log records", needles)
    for request in webhook_receiver.requests:
        leaks += found_in(str(request), "a webhook request", needles)
    # Prefect's state: the database (and its write-ahead log) holds flow and task runs, their
    # parameters, states, error messages, logs and events; the server's and worker's logs.
    prefect_files = [p for p in prefect_server.root.rglob("*") if p.is_file()]
    databases = [p for p in prefect_files if ".db" in p.name]
    assert databases, f"no Prefect database under {prefect_server.root}"
    copy = tmp_path / "prefect-state"
    for path in prefect_files:
        target = copy / path.relative_to(prefect_server.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # a snapshot: the server keeps writing
    seen = []  # the control: the same search finds what the run did write there
    for path in sorted(copy.rglob("*")):
        if path.is_file():
            leaks += found_in(path.read_bytes(), str(path.relative_to(copy)), needles)
            seen += found_in(path.read_bytes(), path.name, {"batch": "batch-0001-radiology"})
    assert any(".db" in where for where in seen), seen
    assert found_in(str(webhook_receiver.accepted), "webhooks", {"batch": "batch-0001-radiology"})
    assert found_in(caplog.text, "log", {"batch": "batch-0001-radiology"})
    assert leaks == []
    research = open_store(env["MIRA_RESEARCH_URL"], Settings().s3_config())
    assert any(info.key.endswith(".parquet") for info in research.list("catalog"))


def test_reprs_hide_the_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What a traceback, a Dask "Compute Failed" log line (the task's repr) or a Prefect
    parameter display could print: the settings and the S3 connection show no secret."""
    monkeypatch.setenv("MIRA_DEID_SECRET", DEID_SECRET)
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = Settings()
    for text in (repr(settings), str(settings), repr(settings.s3_config())):
        assert DEID_SECRET not in text and SECRET_KEY not in text
    assert settings.s3_config().secret_access_key == SECRET_KEY
    assert settings.deid_key() == DEID_SECRET.encode()
    from tasks.deid import DeidPolicy
    from tasks.deid.stage import DeidJob

    store = open_store(tmp_path)
    job = DeidJob(store, store, "b", settings.deid_key(), DeidPolicy.default())
    assert DEID_SECRET not in repr(job) and job.key == DEID_SECRET.encode()


def test_a_secret_file_error_names_the_file_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mira.errors import ConfigError

    monkeypatch.delenv("MIRA_DEID_SECRET", raising=False)
    monkeypatch.delenv("MIRA_S3_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    short = tmp_path / "short.key"
    short.write_text(SHORT_SECRET)
    monkeypatch.setenv("MIRA_DEID_SECRET_FILE", str(short))
    with pytest.raises(ConfigError) as refused:
        Settings().deid_key()
    assert SHORT_SECRET not in str(refused.value) and "at least" in str(refused.value)
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match=r"MIRA_S3_SECRET_ACCESS_KEY_FILE .*missing\.key"):
        Settings().s3_config()
    key_file = tmp_path / "s3.key"
    key_file.write_text(f"  {SECRET_KEY}\n")
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY_FILE", str(key_file))
    assert Settings().s3_config().secret_access_key == SECRET_KEY


def test_a_deployment_reads_the_secret_from_a_prefect_secret_block(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """MIRA_DEID_SECRET_BLOCK names a Prefect Secret block: the worker needs no secret in its
    environment, and the server keeps the value encrypted (it is not in its database)."""
    from prefect.blocks.system import Secret

    from mira.errors import ConfigError

    value = f"block-{secrets.token_hex(24)}"
    name = f"mira-deid-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name)
    for variable in ("MIRA_DEID_SECRET", "MIRA_DEID_SECRET_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MIRA_DEID_SECRET_BLOCK", name)
    assert Settings().deid_key() == value.encode()
    assert value not in repr(Settings())
    monkeypatch.setenv("MIRA_DEID_SECRET_BLOCK", "no-such-block")
    with pytest.raises(ConfigError, match="no Prefect Secret block named 'no-such-block'"):
        Settings().deid_key()
    stored = b"".join(
        path.read_bytes() for path in prefect_server.root.rglob("*") if path.is_file()
    )
    assert name.encode() in stored  # the block is there, by name
    assert value.encode() not in stored  # its value only encrypted

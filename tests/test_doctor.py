"""``mira doctor`` on the local default stores and on the real SeaweedFS server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from storage.iam import IdentityAdmin
from tests.seaweedfs import SeaweedServer

register_commands()
runner = CliRunner()

POLICY: dict[str, Any] = {
    "cohorts": {"a": {"prefixes": ["dicom/PA/"]}},
    "principals": {
        "etl": {"role": "pipeline"},
        "cura": {"role": "curator"},
        "reader-a": {"role": "reader", "cohorts": ["a"]},
        "ops": {"role": "admin"},
    },
}


def _s3_env(server: SeaweedServer, gateway: str, research: str, **extra: str) -> dict[str, str]:
    return {
        "MIRA_GATEWAY_URL": gateway,
        "MIRA_RESEARCH_URL": research,
        "MIRA_S3_ENDPOINT_URL": str(server.config.endpoint_url),
        "MIRA_S3_ACCESS_KEY_ID": str(server.config.access_key_id),
        "MIRA_S3_SECRET_ACCESS_KEY": str(server.config.secret_access_key),
        "MIRA_S3_REGION": "us-east-1",
        **extra,
    }


def _doctor(env: dict[str, str], *args: str) -> tuple[int, dict[tuple[str, str], dict[str, str]]]:
    """Exit code and the report's lines by (check, zone or subject)."""
    result = runner.invoke(app, ["doctor", "--json", *args], env=env)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    lines = {(r["check"], r["target"].split()[0]): r for r in json.loads(result.stdout)}
    return result.exit_code, lines


def _statuses(lines: dict[tuple[str, str], dict[str, str]]) -> dict[tuple[str, str], str]:
    return {key: line["status"] for key, line in lines.items()}


def test_doctor_on_the_local_default_stores(tmp_path: Path) -> None:
    env = {
        "MIRA_GATEWAY_URL": str(tmp_path / "gateway"),
        "MIRA_RESEARCH_URL": str(tmp_path / "research"),
        "MIRA_PREFECT_API_URL": "",
        "PREFECT_API_URL": "",
    }
    code, lines = _doctor(env)
    assert code == 0
    assert _statuses(lines) == {
        ("TLS", "gateway"): "pass",
        ("encryption at rest", "gateway"): "warn",
        ("versioning", "gateway"): "pass",
        ("TLS", "research"): "pass",
        ("encryption at rest", "research"): "warn",
        ("versioning", "research"): "warn",
        ("Object Lock", "research"): "warn",
        ("policies applied", "access"): "warn",
        ("gateway readable by", "gateway"): "warn",
        ("Prefect analytics", "prefect"): "pass",
        ("Prefect telemetry", "prefect"): "pass",
    }
    assert "encrypt its disk" in lines[("encryption at rest", "research")]["detail"]
    table = runner.invoke(app, ["doctor"], env=env)
    assert table.exit_code == 0 and "mira doctor" in table.stdout and "warn" in table.stdout


def test_doctor_fails_on_a_plain_http_prefect_api_across_the_network(tmp_path: Path) -> None:
    env = {
        "MIRA_GATEWAY_URL": str(tmp_path / "gateway"),
        "MIRA_RESEARCH_URL": str(tmp_path / "research"),
        "MIRA_PREFECT_API_URL": "http://192.0.2.1:4200/api",  # TEST-NET-1: nobody answers
    }
    code, lines = _doctor(env)
    assert code == 1
    assert lines[("TLS", "prefect")]["status"] == "fail"
    assert lines[("Prefect analytics", "prefect")]["status"] == "warn"


PLAIN_BUCKET, LOCK_BUCKET = "doctor-plain", "doctor-locked"


@pytest.fixture(scope="module")
def doctor_buckets(s3_server: SeaweedServer) -> SeaweedServer:
    """The session's server with a plain bucket and an Object Lock bucket of this module's."""
    s3_server.create_bucket(PLAIN_BUCKET)
    s3_server.create_bucket(LOCK_BUCKET, object_lock=True)
    return s3_server


@pytest.mark.s3
def test_doctor_on_the_seaweedfs_server(doctor_buckets: SeaweedServer) -> None:
    s3_server = doctor_buckets
    run = uuid.uuid4().hex[:8]
    env = _s3_env(
        s3_server, f"s3://{PLAIN_BUCKET}/doctor-{run}", f"s3://{LOCK_BUCKET}/doctor-{run}"
    )
    code, lines = _doctor(env)
    statuses = _statuses(lines)
    assert code == 0, lines
    assert statuses[("TLS", "research")] == "warn"  # plain http, but on loopback
    assert statuses[("encryption at rest", "research")] == "pass"
    assert lines[("encryption at rest", "research")]["detail"].endswith("(AES256)")
    assert statuses[("versioning", "research")] == "pass"
    assert statuses[("versioning", "gateway")] == "warn"  # the plain bucket keeps no versions
    assert statuses[("Object Lock", "research")] == "warn"  # enabled, no default retention
    assert statuses[("policies applied", "access")] == "warn"  # no policy file given
    # writes that ask for no encryption leave SeaweedFS's objects in clear: a fail, exit 1
    code, lines = _doctor({**env, "MIRA_S3_SSE": "none"})
    assert code == 1
    assert lines[("encryption at rest", "research")]["status"] == "fail"


@pytest.mark.s3
def test_doctor_without_object_lock_fails_the_research_store(
    doctor_buckets: SeaweedServer,
) -> None:
    s3_server = doctor_buckets
    run = uuid.uuid4().hex[:8]
    env = _s3_env(
        s3_server, f"s3://{LOCK_BUCKET}/doctor-{run}", f"s3://{PLAIN_BUCKET}/doctor-{run}"
    )
    code, lines = _doctor(env)
    assert code == 1
    assert lines[("Object Lock", "research")]["status"] == "fail"
    assert lines[("versioning", "research")]["status"] == "fail"


@pytest.fixture(scope="module")
def iam_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("doctor-iam"), iam_writable=True) as server:
        server.create_bucket("doc-gateway")
        server.create_bucket("doc-research", object_lock=True)
        yield server


@pytest.mark.s3
def test_doctor_compares_the_policy_with_the_server(
    iam_server: SeaweedServer, tmp_path: Path
) -> None:
    env = _s3_env(iam_server, "s3://doc-gateway/site", "s3://doc-research/lab")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    applied = runner.invoke(
        app,
        ["access", "apply", str(policy), "--credentials-dir", str(tmp_path / "keys")],
        env=env,
    )
    assert applied.exit_code == 0, (applied.output, applied.exception)
    code, lines = _doctor(env, "--policy", str(policy))
    assert lines[("policies applied", "access")]["status"] == "pass", lines
    assert lines[("gateway readable by", "gateway")] == {
        "check": "gateway readable by",
        "target": "gateway s3://doc-gateway/site",
        "status": "pass",
        "detail": "etl (pipeline role only)",
    }
    assert code == 0
    # someone widens a reader's policy on the server behind the file's back
    admin = IdentityAdmin(iam_server.config)
    admin.put_policy(
        "reader-a",
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::*"]}
            ],
        },
    )
    admin.ensure_user("intruder")
    code, lines = _doctor(env, "--policy", str(policy))
    assert code == 1
    detail = lines[("policies applied", "access")]["detail"]
    assert "reader-a: policy differs" in detail
    assert "intruder: on the server, not in the policy" in detail
    runner.invoke(
        app,
        ["access", "apply", str(policy), "--credentials-dir", str(tmp_path / "keys")],
        env=env,
    )
    code, lines = _doctor(env, "--policy", str(policy))
    assert lines[("policies applied", "access")]["status"] == "pass" and code == 0


@pytest.mark.s3
def test_doctor_passes_object_lock_with_a_default_retention(
    doctor_buckets: SeaweedServer,
) -> None:
    s3_server = doctor_buckets
    bucket = f"doctor-retained-{uuid.uuid4().hex[:6]}"
    s3_server.create_bucket(bucket, object_lock=True)
    s3_server._s3_call(
        "put_object_lock_configuration",
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    env = _s3_env(s3_server, f"s3://{PLAIN_BUCKET}/doctor-r", f"s3://{bucket}/lab")
    code, lines = _doctor(env)
    assert lines[("Object Lock", "research")] == {
        "check": "Object Lock",
        "target": f"research s3://{bucket}/lab",
        "status": "pass",
        "detail": "enabled, default retention GOVERNANCE 1 day",
    }
    assert code == 0, lines


@pytest.mark.prefect
def test_doctor_asks_the_prefect_server_for_its_analytics(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.seaweedfs import free_port

    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        code, lines = _doctor(
            {
                "MIRA_GATEWAY_URL": str(tmp_path / "gateway"),
                "MIRA_RESEARCH_URL": str(tmp_path / "research"),
                "MIRA_PREFECT_API_URL": api,
            }
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert lines[("Prefect analytics", "prefect")]["detail"] == (
        "server analytics off (as the server reports)"
    )
    assert lines[("Prefect analytics", "prefect")]["status"] == "pass"
    assert lines[("TLS", "prefect")]["status"] == "warn"  # plain http, on loopback
    assert code == 0

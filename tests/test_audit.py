"""The audit trail: one record per command that touches a store, in a chained log that
``mira audit verify`` proves complete and untouched, and ``mira audit query`` answers over."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mira.audit import (
    AUDIT_PREFIX,
    append_records,
    audited,
    log_objects,
    object_key,
    query_log,
    verify_log,
)
from mira.cli.root import app, register_commands
from mira.errors import InvalidInput, ObjectLocked
from mira.settings import Settings
from storage import Store, open_store
from tasks.sample.generate import generate_sample_data
from tests.prefect_server import PrefectTestServer
from tests.seaweedfs import SeaweedServer

pytest_plugins = ["tests.prefect_fixtures"]

register_commands()
SECRET = "audit-test-secret-0123456789abcdef"


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    gateway, research = tmp_path / "gateway", tmp_path / "research"
    generate_sample_data(gateway / "dropzone", patients=1, slides=0)
    monkeypatch.setenv("MIRA_GATEWAY_URL", str(gateway))
    monkeypatch.setenv("MIRA_RESEARCH_URL", str(research))
    monkeypatch.setenv("MIRA_DEID_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    return gateway, research


def mira(*args: str, code: int = 0) -> str:
    """Run a command in-process; its output and, on a failure, its error's one line."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output + (str(result.exception) if result.exception else "")


def records(store: Store) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for _, key in log_objects(store)
        for line in store.read_bytes(key).decode().splitlines()
    ]


def test_a_scripted_session_yields_one_record_per_command(stores: tuple[Path, Path]) -> None:
    """Six commands that touch stores (one of them failing) make six records, in order; help,
    version and the audit commands themselves make none."""
    gateway, research = stores
    session = [
        (["deid", str(gateway / "dropzone"), "out", "--quarantine", "held"], 0),
        (["phi-scan", "out", "--against", str(gateway / "dropzone")], 0),
        (["quarantine", "list", "--in", "held"], 0),
        (["ls"], 1),  # no catalog yet: fails, and is recorded as failed
        (["deid", str(gateway / "dropzone"), "out2", "--quarantine", "held2"], 0),
        (["catalog", "query", "SELECT 1"], 1),
    ]
    for args, code in session:
        mira(*args, code=code)
        mira("audit", "verify")
        mira("--help")
        mira("snapshot", "--help")
    log = open_store(research)
    found = records(log)
    assert [r["operation"] for r in found] == [
        "deid",
        "phi-scan",
        "quarantine list",
        "ls",
        "deid",
        "catalog query",
    ]
    assert [r["seq"] for r in found] == [1, 2, 3, 4, 5, 6]
    assert [r["outcome"] for r in found] == ["ok", "ok", "ok", "failed", "ok", "failed"]
    first = found[0]
    assert first["who"] == f"os:{first['os_user']}" and first["host"] and first["mira_version"]
    entries: list[dict[str, Any]] = first["stores"]
    read = next(e for e in entries if (e["store"], e["access"]) == ("gateway", "read"))
    assert read["prefix"] == "dropzone" and read["objects"] > 30 and read["bytes"] > 0
    assert read["keys"] == [] and not read["keys_listed"]  # gateway names stay on the gateway
    written = [e for e in entries if (e["store"], e["access"]) == ("other", "write")]
    assert sum(e["objects"] for e in written) >= sum(
        1 for p in (gateway.parent / "out").rglob("*") if p.is_file()
    )
    assert all(e["url"] == "" and e["keys"] == [] for e in written)
    # No name from the drop zone (batch, patient folders, files) reached the research store.
    names = {
        part
        for path in (gateway / "dropzone").rglob("*")
        for part in path.relative_to(gateway / "dropzone").parts
        if len(part) >= 6
    }
    assert "DOE_JANE" in names  # the sample's patient folder: PHI in a name
    audit_bytes = b"".join(log.read_bytes(key) for _, key in log_objects(log))
    assert [name for name in names if name.encode() in audit_bytes] == []
    check = verify_log(log)
    assert check.intact and check.objects == 6 and check.records == 6


def test_research_writes_are_listed_with_their_sha256(tmp_path: Path) -> None:
    settings = Settings(gateway_url=str(tmp_path / "gateway"), research_url=str(tmp_path / "rs"))
    with audited(settings, "publish"):
        settings.research().write_bytes("dicom/p/s/i.dcm", b"de-identified bytes")
        settings.research().write_many({"pyramids/a.zarr/0": b"12", "pyramids/a.zarr/1": b"3"})
        settings.gateway().write_bytes("dropzone/DOE_JANE/x.dcm", b"phi")
    (record,) = records(settings.research())
    entries = {(e["store"], e["access"]): e for e in record["stores"]}
    written = entries[("research", "write")]
    assert written["objects"] == 3 and written["bytes"] == len(b"de-identified bytes") + 3
    assert {
        "key": "dicom/p/s/i.dcm",
        "bytes": 19,
        "sha256": hashlib.sha256(b"de-identified bytes").hexdigest(),
    } in written["keys"]
    assert {k["key"] for k in written["keys"]} == {"dicom/p/s/i.dcm", "pyramids/a.zarr"}
    assert entries[("gateway", "write")]["prefix"] == "dropzone"
    assert b"DOE_JANE" not in settings.research().read_bytes(object_key(1))


def test_audit_query_answers_in_sql_and_refuses_writes(stores: tuple[Path, Path]) -> None:
    gateway, research = stores
    mira("deid", str(gateway / "dropzone"), "out", "--quarantine", "held")
    mira("ls", code=1)
    output = mira(
        "audit",
        "query",
        "SELECT operation, outcome, s.store, s.access FROM audit, UNNEST(stores) AS t(s) "
        "WHERE s.access = 'read' ORDER BY seq",
        "--json",
    )
    rows = json.loads(output)
    assert {"operation": "deid", "outcome": "ok", "store": "gateway", "access": "read"} in rows
    by_who = query_log(open_store(research), "SELECT who, count(*) AS n FROM audit GROUP BY who")
    assert by_who.column("n").to_pylist() == [2]
    for sql in ("DELETE FROM audit", "COPY audit TO 'x.csv'", "SELECT * FROM read_text('/etc')"):
        with pytest.raises(InvalidInput):
            query_log(open_store(research), sql)
    mira("audit", "query", "DROP TABLE audit", code=1)


def chain(store: Store, count: int) -> None:
    for n in range(count):
        append_records(store, [{"operation": f"op-{n}"}])


def test_verify_finds_an_edited_deleted_or_reordered_object(local_store: Store) -> None:
    chain(local_store, 5)
    head = verify_log(local_store)
    assert head.intact and head.objects == 5
    folder = Path(local_store.filesystem_path(AUDIT_PREFIX))
    pristine = {p.name: p.read_bytes() for p in folder.iterdir()}

    def restore() -> None:
        for path in folder.iterdir():
            path.unlink()
        for name, body in pristine.items():
            (folder / name).write_bytes(body)

    third, fourth = folder / "000000000003.jsonl", folder / "000000000004.jsonl"
    third.write_bytes(third.read_bytes().replace(b"op-2", b"op-X"))  # an edit
    assert verify_log(local_store).problems == [
        f"{object_key(4)}: prev_sha256 does not match the object before it "
        "(that object, or this one, was changed, replaced or reordered)"
    ]
    restore()
    third.unlink()  # a deletion
    assert [p.split(":")[0] for p in verify_log(local_store).problems] == [object_key(3)]
    restore()
    body3, body4 = third.read_bytes(), fourth.read_bytes()  # a reorder
    third.write_bytes(body4)
    fourth.write_bytes(body3)
    problems = verify_log(local_store).problems
    assert {p.split(":")[0] for p in problems} == {object_key(3), object_key(4), object_key(5)}
    assert any("another sequence number" in p for p in problems)
    restore()
    (folder / "000000000005.jsonl").unlink()  # a cut tail: only the recorded head shows it
    assert verify_log(local_store).intact
    assert "expected SHA-256" in verify_log(local_store, expect=head.head_sha256).problems[0]
    restore()
    (folder / "notes.txt").write_text("x")
    assert verify_log(local_store).problems == [
        f"{AUDIT_PREFIX}/notes.txt: not an audit object (stray key in {AUDIT_PREFIX}/)"
    ]
    (folder / "notes.txt").unlink()
    assert verify_log(local_store, expect=head.head_sha256).intact


def test_verify_command_names_the_object_and_exits_1(stores: tuple[Path, Path]) -> None:
    research = stores[1]
    for _ in range(3):
        mira("ls", code=1)
    assert "audit log intact: 3 objects, 3 records" in mira("audit", "verify")
    (research / object_key(2)).write_text('{"seq": 2, "prev_sha256": "forged"}\n')
    output = mira("audit", "verify", code=1)
    assert object_key(2) in output and object_key(3) in output and "not intact" in output


def test_concurrent_writers_keep_one_chain(store: Store) -> None:
    """Writers racing for the next number: each object is created only if absent, so one wins
    and the other takes the number after; nothing is overwritten or forked."""
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        barrier.wait()
        for m in range(3):
            append_records(store, [{"operation": f"writer-{n}-{m}"}])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = verify_log(store)
    assert check.intact and check.objects == 12
    assert sorted(str(r["operation"]) for r in records(store)) == sorted(
        f"writer-{n}-{m}" for n in range(4) for m in range(3)
    )


@pytest.mark.s3
def test_on_an_object_lock_store_the_log_is_locked_and_rewrites_show(
    s3_lock_store: Store,
) -> None:
    for n in range(3):
        append_records(s3_lock_store, [{"operation": f"op-{n}"}], retention_days=1)
    retention = s3_lock_store.get_retention(object_key(2))
    assert retention is not None and retention.mode == "COMPLIANCE"
    assert retention.until > datetime.now(UTC) + timedelta(hours=23)
    version = s3_lock_store.info(object_key(2)).version_id
    with pytest.raises(ObjectLocked):
        s3_lock_store.delete(object_key(2), version_id=version)
    assert verify_log(s3_lock_store).intact
    # An overwrite makes a new version on top, a delete a marker: the old bytes stay, and
    # verify names both.
    s3_lock_store.write_bytes(object_key(2), b'{"seq": 2}\n')
    s3_lock_store.delete(object_key(3))
    problems = verify_log(s3_lock_store).problems
    assert f"{object_key(2)}: rewritten (2 versions)" in problems
    assert f"{object_key(3)}: deleted (a delete marker hides it)" in problems


@pytest.mark.s3
def test_a_command_on_s3_records_the_access_key_as_who(
    s3_server: SeaweedServer, s3_lock_store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = s3_server.config
    monkeypatch.setenv("MIRA_RESEARCH_URL", s3_lock_store.url)
    monkeypatch.setenv("MIRA_GATEWAY_URL", str(tmp_path / "gateway"))
    monkeypatch.setenv("MIRA_S3_ENDPOINT_URL", str(config.endpoint_url))
    monkeypatch.setenv("MIRA_S3_ACCESS_KEY_ID", str(config.access_key_id))
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY", str(config.secret_access_key))
    monkeypatch.setenv("MIRA_S3_REGION", "us-east-1")
    monkeypatch.setenv("MIRA_AUDIT_RETENTION_DAYS", "1")
    mira("ls", code=1)
    found = records(s3_lock_store)
    assert [(r["operation"], r["who"]) for r in found] == [("ls", f"s3:{config.access_key_id}")]
    assert s3_lock_store.get_retention(object_key(1)) is not None
    assert "audit log intact: 1 objects" in mira("audit", "verify")


def test_audit_off_writes_nothing(
    stores: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRA_AUDIT", "false")
    mira("ls", code=1)
    assert not (stores[1] / AUDIT_PREFIX).exists()


@pytest.mark.prefect
@pytest.mark.slow
def test_a_pipeline_run_by_the_worker_is_one_record(
    prefect_server: PrefectTestServer, prefect_api: str, tmp_path: Path
) -> None:
    """A deployment's run on the Prefect worker, no command around it: one record of kind
    flow, written to the research store its parameters name."""
    from prefect import get_client

    gateway, research = tmp_path / "gateway", tmp_path / "research"
    generate_sample_data(gateway / "dropzone", patients=1, slides=0)
    stores = {"gateway_url": str(gateway), "research_url": str(research)}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pipeline/pipeline")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"batch": "batch-0001-radiology", "stores": stores}
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(2)
    assert state is not None and state.is_completed(), (state, prefect_server.log_tail())
    found = records(open_store(research))
    assert [(r["operation"], r["kind"], r["outcome"]) for r in found] == [
        ("flow pipeline", "flow", "ok")
    ]
    assert found[0]["objects_read"] > 0 and found[0]["objects_written"] > 0
    assert verify_log(open_store(research)).intact


def test_an_append_finds_the_head_without_listing_the_log(
    local_store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The writer remembers the last number and probes forward from it (a listing grows with
    the log: 150 ms at 1,000 objects on SeaweedFS); a wrong hint falls back to listing."""
    from mira.audit import _hint_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    chain(local_store, 3)
    listed: list[str] = []
    original = type(local_store).list

    def counting(self: Store, prefix: str = "") -> Any:
        listed.append(prefix)
        return original(self, prefix)

    monkeypatch.setattr(type(local_store), "list", counting)
    assert append_records(local_store, [{"operation": "4"}]).seq == 4
    _hint_path(local_store).write_text("2")  # others appended 3 and 4 since: probed forward
    assert append_records(local_store, [{"operation": "5"}]).seq == 5
    assert listed == []
    _hint_path(local_store).write_text("99")  # a hint past the log: the listing decides
    assert append_records(local_store, [{"operation": "6"}]).seq == 6
    assert listed == [AUDIT_PREFIX]
    monkeypatch.undo()
    check = verify_log(local_store)
    assert check.intact and check.objects == 6

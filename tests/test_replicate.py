"""Replication to a second real SeaweedFS server (the cloud), from a local research store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mira.errors import ObjectNotFound
from storage import Store, open_store
from storage.s3_upload import ChecksumRefused, VerifiedUploader, checksum_of
from tasks.replicate import LinkOptions, Progress, RemoteTarget, replicate, target_lag
from tests.replicate_batches import (
    expected_contents,
    large_object,
    publish_batch,
    remote_contents,
)
from tests.seaweedfs import SeaweedServer

pytestmark = pytest.mark.s3
CLOUD_BUCKET = "mira-cloud"
PART = 5 * 1024 * 1024
FAST = LinkOptions(part_bytes=PART, attempts=3, backoff_s=0.1)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A second SeaweedFS server: the remote research store in the cloud."""
    with SeaweedServer(tmp_path_factory.mktemp("cloud")) as server:
        server.create_bucket(CLOUD_BUCKET)
        yield server


@pytest.fixture
def target(cloud: SeaweedServer) -> RemoteTarget:
    return RemoteTarget("cloud", f"s3://{CLOUD_BUCKET}/t-{uuid.uuid4().hex[:12]}", cloud.config)


@pytest.fixture
def site(tmp_path: Path) -> Store:
    """The on-site research store (a folder; the S3 site store is in test_replicate_faults)."""
    return open_store(tmp_path / "research")


def test_published_batches_arrive_byte_identical_and_a_rerun_sends_nothing(
    site: Store, target: RemoteTarget
) -> None:
    publish_batch(site, "b-001", 1)
    publish_batch(site, "b-002", 2, slides={"S1": large_object(PART * 2 + 1000, 1)})
    summary = replicate(site, [target], FAST)
    assert [(r.batch, r.status) for r in summary.reports] == [
        ("b-001", "replicated"),
        ("b-002", "replicated"),
    ]
    remote = target.open()
    assert remote_contents(remote) == expected_contents(site, ["b-001", "b-002"])
    # the multipart slide carries the composite of its parts' SHA-256, checked by the server
    head = VerifiedUploader(remote).remote_copy("slides/S1.tiff")
    assert head is not None and head.checksum and head.checksum.endswith("-3")

    again = replicate(site, [target], FAST)
    assert [r.status for r in again.reports] == ["already", "already"]
    assert again.sent_bytes == 0
    lag = target_lag(site, "cloud")
    assert (lag.batches, lag.bytes, lag.oldest_unreplicated) == (0, 0, None)


def test_no_phi_from_the_gateway_or_stray_objects_reaches_the_remote(
    tmp_path: Path, site: Store, target: RemoteTarget
) -> None:
    token = "DOE^JANE-PHI-4711"
    gateway = open_store(tmp_path / "gateway")
    gateway.write_bytes(f"dropzone/b-001/{token}.dcm", f"PatientName={token}".encode())
    objects = publish_batch(site, "b-001", 1)
    site.write_bytes("dicom/P9/stray.dcm", f"PatientName={token}".encode())  # in no catalog
    site.write_bytes("notes/leftover.txt", token.encode())
    # a published object whose bytes no longer match the catalog (overwritten after publish)
    publish_batch(site, "b-002", 2)
    tampered = sorted(k for k in expected_contents(site, ["b-002"]) if k.startswith("dicom/"))[0]
    site.write_bytes(tampered, f"PatientName={token}".encode())

    summary = replicate(site, [target], FAST)
    statuses = {r.batch: r for r in summary.reports}
    assert statuses["b-001"].status == "replicated"
    assert statuses["b-002"].status == "blocked" and statuses["b-002"].refused == (tampered,)
    remote = remote_contents(target.open())
    assert set(remote) == set(expected_contents(site, ["b-001"])) | (
        set(expected_contents(site, ["b-002"]))
        - {tampered}
        - {k for k in expected_contents(site, ["b-002"]) if k.startswith("catalog/")}
    )
    assert not any(token.encode() in data for data in remote.values())
    assert all(remote[k] == v for k, v in objects.items())
    assert not summary.ok
    assert target_lag(site, "cloud").batches == 1  # the blocked batch stays due


def test_the_server_refuses_a_body_that_does_not_match_its_checksum(target: RemoteTarget) -> None:
    uploader = VerifiedUploader(target.open())
    body = b"de-identified bytes" * 100
    wrong = "00" * 32
    with pytest.raises(ChecksumRefused):
        uploader.put("dicom/x.dcm", body, wrong)
    assert uploader.remote_copy("dicom/x.dcm") is None
    upload = uploader.start_multipart("slides/y.tiff", wrong, PART)
    with pytest.raises(ChecksumRefused):
        uploader.put_part("slides/y.tiff", upload, 1, body, bytes(32))
    assert uploader.uploaded_parts("slides/y.tiff", upload) == {}
    uploader.abort_multipart("slides/y.tiff", upload)
    with pytest.raises(ObjectNotFound):
        uploader.uploaded_parts("slides/y.tiff", upload)


def test_a_remote_copy_that_differs_is_sent_again_and_reported(
    site: Store, target: RemoteTarget
) -> None:
    objects = publish_batch(site, "b-001", 1)
    replicate(site, [target], FAST)
    remote = target.open()
    victim = sorted(objects)[0]
    remote.write_bytes(victim, b"damaged on the remote")
    summary = replicate(site, [target], FAST, reverify=True)
    (report,) = summary.reports
    assert report.status == "replicated" and report.resent == (victim,)
    assert report.sent_bytes == len(objects[victim])  # only the damaged object went again
    assert remote.read_bytes(victim) == objects[victim]
    stored = VerifiedUploader(remote).remote_copy(victim)
    assert stored is not None and stored.checksum == checksum_of(
        bytes.fromhex(__import__("hashlib").sha256(objects[victim]).hexdigest())
    )


def test_two_replicators_never_send_the_same_batch_twice(site: Store, target: RemoteTarget) -> None:
    for n in range(6):
        publish_batch(site, f"b-{n:03d}", n)
    total = sum(len(v) for v in expected_contents(site, [f"b-{n:03d}" for n in range(6)]).values())
    results: list[object] = []
    slow = LinkOptions(part_bytes=PART, max_mbps=8.0, concurrency=2)

    def run() -> None:
        results.append(replicate(site, [target], slow))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent: dict[str, int] = {}
    for summary in results:
        for report in summary.reports:  # type: ignore[attr-defined]
            if report.status == "replicated":
                sent[report.batch] = sent.get(report.batch, 0) + 1
    assert sent == {f"b-{n:03d}": 1 for n in range(6)}
    assert sum(s.sent_bytes for s in results) == total  # type: ignore[attr-defined]
    assert remote_contents(target.open()) == expected_contents(site, list(sent))


def test_a_dead_holders_claim_is_taken_over(site: Store) -> None:
    progress = Progress(site, "cloud")
    first = progress.claim("b-001", "other-host-replicator")
    assert first.claimed
    assert not progress.claim("b-001", "me").claimed  # a live lease on another host holds
    progress.release(first.claim)
    taken = progress.claim("b-001", "me")
    assert taken.claimed and taken.claim.generation == 2
    renewed = progress.renew(taken.claim)
    assert renewed.expires_at > taken.claim.expires_at
    assert progress.latest_claim("b-001") == renewed


def test_a_claim_of_a_killed_process_on_this_host_is_stale_at_once(site: Store) -> None:
    import dataclasses

    progress = Progress(site, "cloud")
    held = progress.claim("b-001", "killed-replicator").claim
    dead = dataclasses.replace(held, pid=_dead_pid())  # its lease has not expired
    site.write_json("replication/cloud/claims/b-001/1.json", dataclasses.asdict(dead))
    taken = progress.claim("b-001", "me")
    assert taken.claimed and taken.claim.generation == 2


def _dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_cli_replicates_and_reports_the_lag(
    site: Store, target: RemoteTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from mira.cli.root import app, register_commands
    from tasks.replicate import target_environment

    register_commands()
    for name, value in target_environment(target).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MIRA_REPLICATE_TARGETS", f"cloud={target.url}")
    publish_batch(site, "b-001", 1)
    publish_batch(site, "b-002", 2)
    stores = ["--research", site.url, "--gateway", str(tmp_path / "gateway")]
    runner = CliRunner()
    before = runner.invoke(app, [*stores, "replicate", "status", "--json"])
    assert before.exit_code == 0, before.output
    (lag,) = json.loads(before.stdout)
    assert (lag["target"], lag["batches"], lag["eta_seconds"]) == ("cloud", 2, None)
    assert lag["oldest_unreplicated"] == "2026-01-01T00:01:00+00:00"

    done = runner.invoke(app, [*stores, "replicate", "--max-mbps", "100"])
    assert done.exit_code == 0, done.output
    assert "b-001: replicated" in done.stdout and "replicated 2 batches" in done.stdout
    after = runner.invoke(app, [*stores, "replicate", "status"])
    assert after.exit_code == 0 and "cloud" in after.stdout

    # the audit trail records every object copied to the remote, with its SHA-256
    records = [
        json.loads(line)
        for info in site.list("audit/")
        for line in site.read_bytes(info.key).splitlines()
        if line.strip()
    ]
    (copied,) = [r for r in records if r["operation"] == "replicate"]
    # the remote is a store outside the site's two: mira.audit keeps its counts, not its keys
    (remote,) = [s for s in copied["stores"] if s["store"] == "other" and s["access"] == "write"]
    wanted = expected_contents(site, ["b-001", "b-002"])
    assert remote["objects"] == len(wanted)
    assert remote["bytes"] == sum(len(data) for data in wanted.values())


def test_cli_refuses_a_target_without_its_own_credentials(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRA_")}
    env["MIRA_RESEARCH_URL"] = str(tmp_path / "research")
    mira = str(Path(sys.executable).with_name("mira"))
    result = subprocess.run(
        [mira, "replicate", "--target", "cloud=s3://bucket/prefix"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: replication target cloud has no credentials of its own: set "
        "MIRA_REMOTE_CLOUD_ACCESS_KEY_ID and MIRA_REMOTE_CLOUD_SECRET_ACCESS_KEY"
    ]

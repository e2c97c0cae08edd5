"""Replication when things break: the replicator killed mid-batch, the cloud server killed in the
middle of a multipart upload, a link that is slow, cut for a while, or flips a byte. The site
research store is the session's SeaweedFS server; the cloud is a second one. Every test ends with
the remote byte-identical to the catalog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import Store
from tasks.replicate import (
    LinkOptions,
    Progress,
    RemoteTarget,
    replicate,
    target_environment,
    target_lag,
)
from tests.relay import Relay
from tests.replicate_batches import (
    crash_server,
    expected_contents,
    large_object,
    publish_batch,
    remote_contents,
)
from tests.seaweedfs import SeaweedServer

pytestmark = [pytest.mark.s3, pytest.mark.slow]
CLOUD_BUCKET = "mira-cloud"
PART = 5 * 1024 * 1024
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A cloud server of the test's own: these tests kill it."""
    with SeaweedServer(tmp_path / "cloud") as server:
        server.create_bucket(CLOUD_BUCKET)
        yield server


def cloud_target(server_config: object, name: str = "cloud") -> RemoteTarget:
    return RemoteTarget(name, f"s3://{CLOUD_BUCKET}/r", server_config)  # type: ignore[arg-type]


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_replicator_resumes_without_resending_what_landed(
    s3_store: Store, s3_server: SeaweedServer, cloud: SeaweedServer, tmp_path: Path
) -> None:
    slides = {f"S{n}": large_object(3 * PART - 4096, n) for n in range(3)}
    publish_batch(s3_store, "b-001", 1, slides=slides)
    target = cloud_target(cloud.config)
    total = sum(len(v) for v in expected_contents(s3_store, ["b-001"]).values())
    env = dict(
        os.environ,
        MIRA_RESEARCH_URL=s3_store.url,
        MIRA_GATEWAY_URL=str(tmp_path / "gateway"),
        MIRA_S3_ENDPOINT_URL=s3_server.config.endpoint_url or "",
        MIRA_S3_ACCESS_KEY_ID=s3_server.config.access_key_id or "",
        MIRA_S3_SECRET_ACCESS_KEY=s3_server.config.secret_access_key or "",
        MIRA_S3_REGION="us-east-1",
        MIRA_REPLICATE_TARGETS=f"cloud={target.url}",
        **target_environment(target),
    )
    command = [str(Path(sys.executable).with_name("mira")), "replicate", "--max-mbps", "60", "--part-mib", "5",
               "--concurrency", "1"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    progress = Progress(s3_store, "cloud")
    remote = target.open()
    try:
        # kill it once one slide has landed and the next is part-way through its parts
        wait_for(
            lambda: (
                sum(o.key.startswith("slides/") for o in remote.list("slides/")) >= 1
                and any(progress.upload_record(f"slides/S{n}.tiff") for n in range(3))
            ),
            120,
            "a slide on the remote and another one part-way",
        )
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    landed = remote_contents(remote)
    assert not any(k.startswith("catalog/") for k in landed), "no catalog part before its data"
    already = sum(len(v) for v in landed.values())
    # parts of unfinished uploads (a record whose upload completed just before the kill, its
    # object already landed, is not counted twice)
    records = [progress.upload_record(f"slides/S{n}.tiff") for n in range(3)]
    parts_held = sum(PART * len(r.parts) for r in records if r is not None and r.key not in landed)

    summary = replicate(s3_store, [target], LinkOptions(part_bytes=PART))
    (report,) = summary.reports
    assert report.status == "replicated"
    # only what had not landed was sent, give or take the one part in flight at the kill
    assert report.sent_bytes <= total - already - parts_held + PART
    assert remote_contents(remote) == expected_contents(s3_store, ["b-001"])


def test_the_cloud_killed_mid_multipart_upload_and_restarted(
    s3_store: Store, cloud: SeaweedServer
) -> None:
    slide = large_object(4 * PART - 1000, 7)
    publish_batch(s3_store, "b-001", 1, slides={"BIG": slide})
    target = cloud_target(cloud.config)
    progress = Progress(s3_store, "cloud")
    options = LinkOptions(part_bytes=PART, max_mbps=40, concurrency=1, attempts=2, backoff_s=0.2)
    results: list[object] = []
    runner = threading.Thread(target=lambda: results.append(replicate(s3_store, [target], options)))
    runner.start()
    wait_for(
        lambda: (r := progress.upload_record("slides/BIG.tiff")) is not None and len(r.parts) >= 2,
        120,
        "two parts of the slide on the cloud",
    )
    crash_server(cloud)
    runner.join(timeout=180)
    (report,) = results[0].reports  # type: ignore[attr-defined]
    assert report.status == "failed"
    cloud.start()
    record = progress.upload_record("slides/BIG.tiff")
    assert record is not None and len(record.parts) >= 2

    landed = remote_contents(target.open())
    total = sum(len(v) for v in expected_contents(s3_store, ["b-001"]).values())

    again = replicate(s3_store, [target], LinkOptions(part_bytes=PART))
    (report,) = again.reports
    assert report.status == "replicated"
    # the parts the server kept through the crash were not sent again
    already = sum(len(v) for v in landed.values())
    assert report.sent_bytes <= total - already - len(record.parts) * PART
    assert remote_contents(target.open()) == expected_contents(s3_store, ["b-001"])


def test_a_byte_flipped_in_flight_is_refused_by_the_server_and_sent_again(
    s3_store: Store, cloud: SeaweedServer
) -> None:
    publish_batch(s3_store, "b-001", 1, slides={"S1": large_object(2 * PART, 3)})
    with Relay(cloud.config, flip_once=True) as relay:
        target = cloud_target(relay.config)
        summary = replicate(s3_store, [target], LinkOptions(part_bytes=PART, backoff_s=0.1))
        assert relay.flipped == 1
    (report,) = summary.reports
    assert report.status == "replicated" and report.refused_checksums >= 1
    assert remote_contents(cloud_target(cloud.config).open()) == expected_contents(
        s3_store, ["b-001"]
    )


def test_a_long_outage_grows_the_backlog_which_then_drains(
    s3_store: Store, cloud: SeaweedServer
) -> None:
    options = LinkOptions(part_bytes=PART, attempts=2, backoff_s=0.1)
    publish_batch(s3_store, "b-001", 1)
    with Relay(cloud.config, delay_s=0.01) as slow_link:  # a slow link still gets there
        assert replicate(s3_store, [cloud_target(slow_link.config)], options).ok
    down = Relay(cloud.config)
    down.cut()  # the link goes down; ingest carries on publishing
    for n in (2, 3, 4):
        publish_batch(s3_store, f"b-00{n}", n)
        summary = replicate(s3_store, [cloud_target(down.config)], options)
        assert not summary.ok and summary.count("failed") == 1
        lag = target_lag(s3_store, "cloud")
        assert lag.batches == n - 1 and lag.oldest_unreplicated == "2026-01-01T00:02:00+00:00"
    assert lag.eta_seconds is not None and lag.rate_bytes_per_s  # measured on b-001

    with Relay(cloud.config) as back:
        summary = replicate(s3_store, [cloud_target(back.config)], options)
    assert [r.status for r in summary.reports] == [
        "already",
        "replicated",
        "replicated",
        "replicated",
    ]
    assert target_lag(s3_store, "cloud").batches == 0
    batches = ["b-001", "b-002", "b-003", "b-004"]
    assert remote_contents(cloud_target(cloud.config).open()) == expected_contents(
        s3_store, batches
    )

"""Orchestration against a real Prefect server: deployments, UI-style runs, event-driven runs.

One server per session (``tests/prefect_fixtures.py``), started the way ``mira serve`` starts
it, with every deployment of ``deployments/prefect.yaml`` and a process worker.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psutil
import pydicom
import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, FlowRun
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events.actions import RunDeployment
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.automations import EventTrigger
from prefect.events.schemas.events import ResourceSpecification

from flows.notify import WEBHOOK_URLS_ENV, notify_on_completion, notify_on_failure
from flows.params import StoreParams
from flows.sensor import dropzone_sensor
from mira.cli.serve import store_environment
from mira.cli.stack import (
    PREFECT_DATABASE_ENV,
    PROJECT_ROOT,
    ServeConfig,
    deployable,
    prefect_environment,
)
from mira.settings import load_settings
from storage import open_store
from tasks import layout
from tasks.ingest.announce import (
    BATCH_READY,
    EMITTED_NAME,
    announce_batch,
    batch_event_id,
)
from tasks.ingest.dropzone import find_ready_batches
from tests.prefect_server import PrefectTestServer

if TYPE_CHECKING:
    from tests.prefect_fixtures import PrefectStores, Receiver

pytest_plugins = ["tests.prefect_fixtures"]

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SAMPLE_DICOM = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
RUN_TIMEOUT_S = 150.0
CHROMIUM = Path("/usr/bin/chromium")
T = TypeVar("T")


def drop_batch(gateway: Path, name: str) -> None:
    """A complete drop-zone batch: a few of pydicom's bundled DICOM files and a _READY marker."""
    folder = gateway / "dropzone" / name
    folder.mkdir(parents=True)
    for file in SAMPLE_DICOM:
        shutil.copyfile(TEST_FILES / file, folder / file)
    (folder / "_READY").write_text("")


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``check`` until it returns something; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def runs_of(client: SyncPrefectClient, deployment_id: UUID, batch: str) -> list[FlowRun]:
    """The flow runs of a deployment for one batch, as the server has them."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [run for run in runs if run.parameters.get("batch") == batch]


def wait_until_final(client: SyncPrefectClient, run_id: UUID, server: PrefectTestServer) -> FlowRun:
    """The flow run once it reached a final state (the worker's log in the failure message)."""

    def final() -> FlowRun | None:
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    try:
        return wait_for(final, RUN_TIMEOUT_S, f"flow run {run_id}")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{server.log_tail()}") from err


def announcements(client: SyncPrefectClient, batch: str) -> list[Any]:
    """The ``mira.batch.ready`` events the server stored for ``batch``."""
    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=[BATCH_READY]),
            resource=EventResourceFilter(id=[f"mira.batch.{batch}"]),
        ),
        limit=50,
    )
    return list(page.events)


@pytest.fixture
def client(prefect_api: str) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as sync_client:
        yield sync_client


@pytest.mark.prefect
def test_deployments_register_with_schedules_and_trigger(
    prefect_server: PrefectTestServer, client: SyncPrefectClient
) -> None:
    ready, missing = deployable(prefect_server.config)
    assert {"pipeline", "ingest-on-upload", "dropzone-sensor"} <= set(ready)
    assert prefect_server.stack is not None and prefect_server.stack.skipped == missing

    pipeline = client.read_deployment_by_name("pipeline/pipeline")
    assert pipeline.work_pool_name == "mira-process"
    form = pipeline.parameter_openapi_schema or {}
    assert form["required"] == ["batch"]
    assert "gateway_url" in form["definitions"]["StoreParams"]["properties"], "the UI form"
    (pull,) = pipeline.pull_steps or []
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}
    }

    sensor = client.read_deployment_by_name("dropzone-sensor/dropzone-sensor")
    limit = sensor.global_concurrency_limit
    assert limit is not None and limit.limit == 1
    options = sensor.concurrency_options
    assert options is not None and options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    (interval,) = [s.schedule for s in sensor.schedules]
    assert isinstance(interval, IntervalSchedule)
    assert interval.interval == timedelta(seconds=60)

    upload = client.read_deployment_by_name("pipeline/ingest-on-upload")
    (automation,) = client.read_automations_by_name("mira-batch-ready")
    assert automation.enabled
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.expect == {BATCH_READY}
    assert trigger.match == ResourceSpecification({"prefect.resource.id": "mira.batch.*"})
    (action,) = automation.actions
    assert isinstance(action, RunDeployment)
    assert action.deployment_id == upload.id
    assert (action.parameters or {})["batch"] == "{{ event.payload.batch }}"


@pytest.mark.prefect
@pytest.mark.parametrize(
    ("name", "cron"),
    [("quality/nightly-quality", "0 2 * * *"), ("snapshot/weekly-snapshot", "0 4 * * 0")],
)
def test_scheduled_deployments_carry_their_cron(
    prefect_server: PrefectTestServer, client: SyncPrefectClient, name: str, cron: str
) -> None:
    deployment_name = name.split("/")[1]
    if prefect_server.stack is not None and deployment_name in prefect_server.stack.skipped:
        pytest.skip(f"{deployment_name}: its flow file is not written yet")
    deployment = client.read_deployment_by_name(name)
    (schedule,) = [s.schedule for s in deployment.schedules]
    assert isinstance(schedule, CronSchedule)
    assert (schedule.cron, schedule.timezone) == (cron, "UTC")


@pytest.mark.prefect
def test_a_run_started_like_the_ui_completes_on_sample_data(
    prefect_server: PrefectTestServer, client: SyncPrefectClient, tmp_path: Path
) -> None:
    gateway = tmp_path / "gateway"  # the form's store field, not the worker's default
    drop_batch(gateway, "ui-batch")
    deployment = client.read_deployment_by_name("pipeline/pipeline")
    stores = {"gateway_url": str(gateway), "research_url": str(tmp_path / "research")}
    run = client.create_flow_run_from_deployment(
        deployment.id, parameters={"batch": "ui-batch", "stores": stores}
    )
    final = wait_until_final(client, run.id, prefect_server)
    assert final.state is not None and final.state.is_completed(), final.state
    summary = open_store(gateway).read_json("ingest/ui-batch/summary.json")
    assert (summary["batch"], summary["accepted"]) == ("ui-batch", len(SAMPLE_DICOM))


@pytest.mark.prefect
def test_a_dropped_batch_leads_to_exactly_one_pipeline_run(
    prefect_server: PrefectTestServer, prefect_stores: PrefectStores, client: SyncPrefectClient
) -> None:
    batch = f"upload-{uuid.uuid4().hex[:8]}"
    drop_batch(prefect_stores.gateway, batch)
    stores = StoreParams(gateway_url=str(prefect_stores.gateway))
    assert batch in dropzone_sensor(stores)
    assert batch not in dropzone_sensor(stores), "a second scan must not announce it again"

    restarted = client.create_flow_run_from_deployment(
        client.read_deployment_by_name("dropzone-sensor/dropzone-sensor").id
    )
    final_sensor = wait_until_final(client, restarted.id, prefect_server)
    assert final_sensor.state is not None and final_sensor.state.is_completed()

    gateway = open_store(prefect_stores.gateway)
    gateway.delete(
        f"{layout.ANNOUNCEMENTS}/{batch}/{EMITTED_NAME}"
    )  # as if it died before the mark
    # The sensor listed the batch before the triggered run claimed it (once the run holds the
    # batch, the sensor's pending list leaves it out: no re-announcement at all).
    (ref,) = [r for r in find_ready_batches(gateway) if r.name == batch]
    assert announce_batch(gateway, ref, stores.model_dump()).repeated, "unconfirmed: re-emitted"

    upload = client.read_deployment_by_name("pipeline/ingest-on-upload")
    (run,) = wait_for(lambda: runs_of(client, upload.id, batch) or None, 60, "the triggered run")
    final = wait_until_final(client, run.id, prefect_server)
    assert final.state is not None and final.state.is_completed(), final.state
    assert (final.parameters["stores"] or {}).get("gateway_url") == str(prefect_stores.gateway)

    events = wait_for(lambda: announcements(client, batch) or None, 30, "the stored event")
    time.sleep(3)  # let a duplicate, if one were coming, reach the trigger and the event store
    assert [e.id for e in announcements(client, batch)] == [batch_event_id(gateway, batch)]
    assert len(events) == 1
    assert len(runs_of(client, upload.id, batch)) == 1, "exactly one pipeline run per batch"


@pytest.mark.prefect
def test_hooks_post_the_run_outcome_to_the_webhook(
    prefect_api: str, webhook_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_URLS_ENV, webhook_receiver.url)
    webhook_receiver.statuses = [503]

    @flow(name="pipeline", on_completion=[notify_on_completion], on_failure=[notify_on_failure])
    def tiny_pipeline(batch: str, fail: bool = False) -> dict[str, Any]:
        if fail:
            raise ValueError(f"bad batch {batch}")
        return {"batch": batch, "ingest": {"accepted": 3}}

    tiny_pipeline("hook-batch")
    tiny_pipeline("hook-failure", fail=True, return_state=True)
    bodies = [r["json"] for r in webhook_receiver.accepted]
    assert [(b["batch"], b["state"]) for b in bodies] == [
        ("hook-batch", "COMPLETED"),
        ("hook-failure", "FAILED"),
    ]
    assert bodies[0]["summary"] == {"batch": "hook-batch", "ingest": {"accepted": 3}}
    assert "bad batch hook-failure" in (bodies[1]["message"] or "")
    assert len(webhook_receiver.requests) == 3, "one 503, retried once, then one more notice"


@pytest.mark.prefect
def test_server_and_worker_run_offline(prefect_server: PrefectTestServer) -> None:
    assert prefect_server.stack is not None
    for process in prefect_server.stack.processes:
        env = psutil.Process(process.pid).environ()
        assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
        assert env.get("DO_NOT_TRACK") == "1"
        assert env.get("GX_ANALYTICS_ENABLED") == "false"


@pytest.mark.prefect
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is not installed: run .ci/system-packages as root",
)
def test_the_ui_shows_the_deployments(prefect_server: PrefectTestServer, tmp_path: Path) -> None:
    shot = tmp_path / "deployments.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=15000",
            "--window-size=1400,900",
            f"--screenshot={shot}",
            f"{prefect_server.config.base_url}/deployments",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    assert shot.stat().st_size > 10_000, "a rendered page, not a blank one"


def test_serve_environment_defaults_to_sqlite_in_the_home(tmp_path: Path) -> None:
    config = ServeConfig(home=tmp_path / "prefect", port=4321)
    env = prefect_environment(config, base={})
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert env[PREFECT_DATABASE_ENV] == f"sqlite+aiosqlite:///{tmp_path / 'prefect' / 'prefect.db'}"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["GX_ANALYTICS_ENABLED"] == "false"


def test_serve_environment_uses_postgres_when_configured(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://mira:secret@db.example:5432/prefect"
    config = ServeConfig(home=tmp_path)
    assert (
        prefect_environment(config, base={"MIRA_PREFECT_DATABASE_URL": url})[PREFECT_DATABASE_ENV]
        == url
    )
    assert (
        prefect_environment(config, base={PREFECT_DATABASE_ENV: url})[PREFECT_DATABASE_ENV] == url
    )


def test_worker_gets_absolute_store_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(gateway_url="data/gateway", research_url="s3://bucket/research")
    env = store_environment(settings)
    assert env["MIRA_GATEWAY_URL"] == str(tmp_path / "data" / "gateway")
    assert env["MIRA_RESEARCH_URL"] == "s3://bucket/research"

"""The ``replicate`` flow and deployment on a real Prefect server: after each publish (an event)
and on a schedule, progress in the UI, a webhook notice when a target lags."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, FlowRun
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger
from prefect.events.schemas.events import ResourceSpecification

from flows.notify import WEBHOOK_URLS_ENV
from flows.params import StoreParams
from flows.replicate import ReplicateParams, replicate_flow
from storage import open_store
from tasks.replicate import RemoteTarget, target_environment, target_lag
from tests.relay import Relay
from tests.replicate_batches import expected_contents, publish_batch, remote_contents
from tests.seaweedfs import SeaweedServer

if TYPE_CHECKING:
    from tests.prefect_fixtures import Receiver
    from tests.prefect_server import PrefectTestServer

pytest_plugins = ["tests.prefect_fixtures"]
pytestmark = [pytest.mark.prefect, pytest.mark.s3]
T = TypeVar("T")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("cloud")) as server:
        server.create_bucket("mira-cloud")
        yield server


@pytest.fixture
def client(prefect_api: str) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as sync_client:
        yield sync_client


def test_the_replicate_deployment_runs_after_each_publish_and_as_a_sweeper(
    prefect_server: PrefectTestServer, client: SyncPrefectClient
) -> None:
    deployment = client.read_deployment_by_name("replicate/replicate")
    (interval,) = [s.schedule for s in deployment.schedules]
    assert isinstance(interval, IntervalSchedule) and interval.interval == timedelta(minutes=10)
    limit = deployment.global_concurrency_limit
    assert limit is not None and limit.limit == 1
    options = deployment.concurrency_options
    assert options is not None and options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    (automation,) = client.read_automations_by_name("mira-replicate-after-publish")
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger) and automation.enabled
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related == ResourceSpecification(
        {"prefect.resource.role": "flow", "prefect.resource.name": "deidentify"}
    )
    (action,) = automation.actions
    assert isinstance(action, RunDeployment) and action.deployment_id == deployment.id


def test_a_completed_deidentify_run_starts_a_replicate_run(
    prefect_api: str, client: SyncPrefectClient
) -> None:
    """The trigger fires on the event Prefect emits when a ``deidentify`` flow run completes
    (here a stand-in of that name); the worker's replicate run, without targets, is a no-op."""
    deployment = client.read_deployment_by_name("replicate/replicate")
    before = {run.id for run in _runs(client, deployment.id)}

    @flow(name="deidentify")
    def published(batch: str) -> str:
        return batch

    published("b-event")

    def started() -> FlowRun | None:
        fresh = [r for r in _runs(client, deployment.id) if r.id not in before]
        fresh = [r for r in fresh if not r.auto_scheduled]
        done = [r for r in fresh if r.state is not None and r.state.is_final()]
        return done[0] if done else None

    run = _wait(started, 150, "a replicate run triggered by the deidentify run")
    assert run.state is not None and run.state.is_completed(), run.state


def _runs(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def _wait(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_the_flow_replicates_and_posts_a_notice_while_the_link_is_down(
    prefect_api: str,
    client: SyncPrefectClient,
    cloud: SeaweedServer,
    webhook_receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    site = open_store(tmp_path / "research")
    stores = StoreParams(research_url=site.url, gateway_url=str(tmp_path / "gateway"))
    url = f"s3://mira-cloud/t-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(WEBHOOK_URLS_ENV, webhook_receiver.url)
    for name, value in target_environment(RemoteTarget("cloud", url, cloud.config)).items():
        monkeypatch.setenv(name, value)
    publish_batch(site, "b-001", 1)
    publish_batch(site, "b-002", 2)

    down = Relay(cloud.config)
    down.cut()
    monkeypatch.setenv("MIRA_REMOTE_CLOUD_ENDPOINT_URL", down.config.endpoint_url or "")
    params = ReplicateParams(targets=[f"cloud={url}"], attempts=1, lag_batches_alert=1)
    state = replicate_flow(params, stores, return_state=True)
    assert state.is_failed()
    (notice,) = [r["json"] for r in webhook_receiver.accepted]
    assert (notice["flow"], notice["state"]) == ("replicate", "LAGGING")
    assert notice["summary"]["target"] == "cloud" and notice["summary"]["batches"] == 2

    monkeypatch.setenv("MIRA_REMOTE_CLOUD_ENDPOINT_URL", cloud.config.endpoint_url or "")
    summary = replicate_flow(params, stores)
    assert [r.status for r in summary.reports] == ["replicated", "replicated"]
    assert not summary.alerted and summary.lags[0].batches == 0
    assert target_lag(site, "cloud").batches == 0
    remote = open_store(url, cloud.config)
    assert remote_contents(remote) == expected_contents(site, ["b-001", "b-002"])
    assert len(webhook_receiver.accepted) == 1

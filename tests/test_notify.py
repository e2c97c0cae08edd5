"""Webhook notices: delivered exactly once after transient failures, never retried on a refusal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings
from prefect.states import Completed, Failed

from flows.notify import (
    WEBHOOK_URLS_ENV,
    notice_for,
    notify_on_completion,
    notify_on_failure,
    post_notice,
    webhook_urls,
)

if TYPE_CHECKING:
    from tests.prefect_fixtures import Receiver

pytest_plugins = ["tests.prefect_fixtures"]


@pytest.fixture(autouse=True)
def _no_api_logs() -> Iterator[None]:
    """The hooks log to the flow run; outside a run that would start a throwaway API server."""
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield


def _flow_run(batch: str = "batch-a") -> FlowRun:
    return FlowRun(
        id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4(), parameters={"batch": batch}
    )


@flow(name="pipeline")
def _pipeline(batch: str) -> dict[str, Any]:
    return {"batch": batch}


def test_notice_is_delivered_exactly_once_after_a_503(webhook_receiver: Receiver) -> None:
    webhook_receiver.statuses = [503]
    notice = notice_for(_pipeline, _flow_run(), Completed(data={"ingest": {"accepted": 3}}))
    assert post_notice(webhook_receiver.url, notice, backoff_s=0.01) is True
    assert [r["status"] for r in webhook_receiver.requests] == [503, 200]
    assert len(webhook_receiver.accepted) == 1
    body = webhook_receiver.accepted[0]["json"]
    assert body["batch"] == "batch-a"
    assert body["state"] == "COMPLETED"
    assert body["summary"] == {"ingest": {"accepted": 3}}
    assert body["flow"] == "pipeline"
    keys = {r["headers"]["Idempotency-Key"] for r in webhook_receiver.requests}
    assert keys == {body["id"]}, "every attempt must carry the same idempotency key"


def test_a_refusal_is_not_retried(webhook_receiver: Receiver) -> None:
    webhook_receiver.statuses = [400]
    notice = notice_for(_pipeline, _flow_run(), Completed(data=None))
    assert post_notice(webhook_receiver.url, notice, backoff_s=0.01) is False
    assert len(webhook_receiver.requests) == 1


def test_an_unreachable_receiver_gives_up_after_the_attempts() -> None:
    sleeps: list[float] = []
    notice = notice_for(_pipeline, _flow_run(), Completed(data=None))
    delivered = post_notice(
        "http://127.0.0.1:9/hook", notice, attempts=3, backoff_s=0.5, sleep=sleeps.append
    )
    assert delivered is False
    assert sleeps == [0.5, 1.0], "exponential backoff between attempts"


def test_failure_hook_posts_the_failed_state(
    webhook_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_URLS_ENV, f" {webhook_receiver.url} ,")
    notify_on_failure(_pipeline, _flow_run("batch-b"), Failed(message="ingest failed: bad batch"))
    assert len(webhook_receiver.accepted) == 1
    body = webhook_receiver.accepted[0]["json"]
    assert (body["batch"], body["state"], body["summary"]) == ("batch-b", "FAILED", None)
    assert body["message"] == "ingest failed: bad batch"
    assert body["time"].endswith("+00:00")


def test_hooks_do_nothing_without_webhooks(
    webhook_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEBHOOK_URLS_ENV, raising=False)
    notify_on_completion(_pipeline, _flow_run(), Completed(data={}))
    assert webhook_receiver.requests == []


def test_webhook_urls_are_comma_separated() -> None:
    env = {WEBHOOK_URLS_ENV: "http://a.example/x, ,http://b.example/y"}
    assert webhook_urls(env) == ("http://a.example/x", "http://b.example/y")
    assert webhook_urls({}) == ()

"""Outbound notifications: when the pipeline finishes or fails, POST a JSON notice to webhooks.

Attach the hooks to a flow::

    @flow(on_completion=[notify_on_completion], on_failure=[notify_on_failure],
          on_crashed=[notify_on_failure])

The webhook URLs come from ``MIRA_WEBHOOK_URLS`` (comma-separated). Delivery retries
connection errors, throttling (429) and server errors (5xx) with exponential backoff, and gives
up at once on any other 4xx: the receiver refused the notice and will refuse it again. Every
attempt for one notice carries the same ``Idempotency-Key`` header (also the notice's ``id``),
so a receiver that processed a request whose response was lost can drop the repeat.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.logging.loggers import flow_run_logger
from pydantic import BaseModel

from mira.settings import Settings, load_settings

WEBHOOK_URLS_ENV = "MIRA_WEBHOOK_URLS"
ATTEMPTS = 4
BACKOFF_S = 0.5
TIMEOUT_S = 10.0
NOTICE_NAMESPACE = uuid.UUID("5d1c7a1e-3f0b-5b8e-9a57-6d6972610001")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunNotice:
    """What a webhook receiver learns about one finished flow run (the JSON body)."""

    id: str
    flow: str
    flow_run_id: str
    flow_run_name: str
    batch: str | None
    state: str
    state_name: str
    message: str | None
    summary: Any
    time: str

    def body(self) -> bytes:
        """The notice as compact JSON."""
        return json.dumps(asdict(self), sort_keys=True, default=str).encode()


def webhook_urls(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The configured webhook URLs (``MIRA_WEBHOOK_URLS``, comma-separated); empty: none."""
    if environ is None:
        return tuple(load_settings().webhooks())
    return tuple(Settings(webhook_urls=environ.get(WEBHOOK_URLS_ENV, "")).webhooks())


def notice_for(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> RunNotice:
    """Describe ``flow_run`` as it entered ``state``; the summary is the flow's return value."""
    occurred = state.timestamp or datetime.now(UTC)
    batch = flow_run.parameters.get("batch")
    return RunNotice(
        id=str(uuid.uuid5(NOTICE_NAMESPACE, f"{flow_run.id}/{state.id}")),
        flow=flow.name,
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        batch=str(batch) if batch is not None else None,
        state=state.type.value,
        state_name=state.name or state.type.value,
        message=state.message,
        summary=_summary_of(state),
        time=occurred.astimezone(UTC).isoformat(),
    )


def _summary_of(state: State) -> Any:
    """The completed flow's return value as JSON-safe data; None when unavailable or failed."""
    if not state.is_completed():
        return None
    try:
        value = state.result(raise_on_failure=False)
    except Exception as err:  # a result that cannot be loaded must not block the notice
        log.warning("could not read the flow result for the notice: %s", err)
        return None
    if isinstance(value, BaseException):
        return None
    if isinstance(value, BaseModel):  # the stage summaries (flows/summaries.py)
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def _is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def post_notice(
    url: str,
    notice: RunNotice,
    *,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    timeout_s: float = TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST ``notice`` to ``url``; retry transient failures with backoff. True when delivered."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": notice.id}
    body = notice.body()
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.TransportError as err:
            problem = f"{type(err).__name__}: {err}"
        else:
            if response.is_success:
                return True
            if not _is_retryable(response.status_code):
                log.error("webhook %s refused the notice: HTTP %d", url, response.status_code)
                return False
            problem = f"HTTP {response.status_code}"
        if attempt < attempts:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("webhook %s: %s; retrying in %.1f s", url, problem, delay)
            sleep(delay)
    log.error("webhook %s: %s; gave up after %d attempts", url, problem, attempts)
    return False


def send_notice(notice: RunNotice, urls: Iterable[str]) -> dict[str, bool]:
    """Deliver ``notice`` to every URL; one unreachable receiver does not stop the others."""
    return {url: post_notice(url, notice) for url in urls}


def _notify(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    urls = webhook_urls()
    if not urls:
        return
    notice = notice_for(flow, flow_run, state)
    delivered = send_notice(notice, urls)
    logger = flow_run_logger(flow_run, flow)
    logger.info(
        "notified %d of %d webhooks that the run is %s",
        sum(delivered.values()),
        len(delivered),
        notice.state_name,
    )


def notify_on_completion(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    """Prefect ``on_completion`` hook: POST the completed run's notice to every webhook."""
    _notify(flow, flow_run, state)


def notify_on_failure(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    """Prefect ``on_failure`` (and ``on_crashed``) hook: POST the failed run's notice."""
    _notify(flow, flow_run, state)

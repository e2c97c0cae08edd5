"""Replication to remote object storage: after each publish (an event) and as a scheduled sweeper.

One task per target copies every published batch not yet there, in publish order, resuming
whatever a killed or cut-off pass left; the run's progress artifact counts batches as they land.
Afterwards the lag of each target is measured and, above ``lag_batches_alert`` batches, posted to
the webhooks (``MIRA_WEBHOOK_URLS``). A run fails when a batch could not be completed (the link is
down, or local bytes did not match the catalog); the next run resumes it.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from flows.notify import RunNotice, send_notice, webhook_urls
from flows.params import StoreParams
from flows.reporting import publish_summary
from mira.errors import IntegrityError, TransientStoreError
from tasks.replicate import (
    TARGETS_ENV,
    BatchReport,
    LinkOptions,
    TargetLag,
    published_batches,
    replicate,
    target_lag,
    targets_from,
)

LAG_NOTICE_NAMESPACE = uuid.UUID("5d1c7a1e-3f0b-5b8e-9a57-6d6972610018")


class ReplicateParams(BaseModel):
    """Which targets, and how to use the link."""

    targets: list[str] = Field(
        default_factory=list,
        description="name=s3://bucket/prefix per target; empty: MIRA_REPLICATE_TARGETS.",
    )
    max_mbps: float | None = Field(None, gt=0, description="Bandwidth cap in megabits/s.")
    concurrency: int = Field(4, ge=1, le=64, description="Objects in flight at once.")
    part_mib: int = Field(16, ge=5, description="Objects this large (MiB) or larger go multipart.")
    attempts: int = Field(5, ge=1, description="Attempts per object on transient failures.")
    reverify: bool = Field(False, description="HEAD-check replicated batches; resend any damage.")
    lag_batches_alert: int = Field(
        10, ge=0, description="Post a webhook notice when a target lags by more batches."
    )

    def options(self) -> LinkOptions:
        return LinkOptions(
            max_mbps=self.max_mbps,
            concurrency=self.concurrency,
            part_bytes=self.part_mib * 1024 * 1024,
            attempts=self.attempts,
        )


class ReplicateSummary(BaseModel):
    """What one replication run did, per target and batch, and the lag it left."""

    model_config = ConfigDict(frozen=True)

    reports: tuple[BatchReport, ...]
    lags: tuple[TargetLag, ...]
    alerted: bool = False

    @property
    def ok(self) -> bool:
        return all(r.status in ("replicated", "already", "held") for r in self.reports)


@task(name="replicate-target", persist_result=False, cache_policy=NO_CACHE)
def replicate_target_task(
    stores: StoreParams, spec: str, params: ReplicateParams
) -> list[BatchReport]:
    """Replicate every due batch to one target (``name=s3://...``; its credentials come from
    the worker's environment, never through parameters), updating the progress artifact."""
    (target,) = targets_from([spec], os.environ)
    local = stores.settings().research()
    total = max(1, len(published_batches(local)))
    artifact = create_progress_artifact(0.0, description=f"batches replicated to {target.name}")
    assert isinstance(artifact, uuid.UUID)  # a synchronous task gets the id, not a coroutine
    done: list[BatchReport] = []
    log = get_run_logger()

    def landed(report: BatchReport) -> None:
        done.append(report)
        log.info(
            "%s -> %s: %s (%d bytes sent)",
            report.batch,
            target.name,
            report.status,
            report.sent_bytes,
        )
        update_progress_artifact(artifact, min(100.0, 100.0 * len(done) / total))

    summary = replicate(
        local, [target], params.options(), reverify=params.reverify, on_batch=landed
    )
    return list(summary.reports)


@task(name="replication-lag", persist_result=False, cache_policy=NO_CACHE)
def lag_task(stores: StoreParams, target: str) -> TargetLag:
    return target_lag(stores.settings().research(), target)


def _run_name() -> str:
    return "replicate/all"


@flow(name="replicate", flow_run_name=_run_name, log_prints=False)
def replicate_flow(
    params: ReplicateParams | None = None, stores: StoreParams | None = None
) -> ReplicateSummary:
    """Copy every published batch of the research store to each remote target."""
    params = params or ReplicateParams()
    stores = stores or StoreParams()
    if not params.targets and not os.environ.get(TARGETS_ENV, "").strip():
        # A site without remotes serves the deployment too: its sweeps have nothing to do.
        get_run_logger().info("no replication target configured (%s): nothing to do", TARGETS_ENV)
        return ReplicateSummary(reports=(), lags=())
    targets = targets_from(params.targets, os.environ)
    reports: list[BatchReport] = []
    for target in targets:
        reports.extend(replicate_target_task(stores, f"{target.name}={target.url}", params))
    lags = tuple(lag_task(stores, t.name) for t in targets)
    alerted = alert_on_lag(lags, params.lag_batches_alert)
    summary = ReplicateSummary(reports=tuple(reports), lags=lags, alerted=alerted)
    publish_summary("replicate", "all", "replication", _rows(summary))
    failed = [r for r in reports if r.status in ("failed", "blocked")]
    if failed:
        first = failed[0]
        error = IntegrityError if first.status == "blocked" else TransientStoreError
        raise error(f"batch {first.batch} not replicated to {first.target}: {first.detail}")
    return summary


def alert_on_lag(lags: tuple[TargetLag, ...], threshold: int) -> bool:
    """POST a notice to every webhook for each target lagging by more than ``threshold``
    batches; True when one was due."""
    behind = [lag for lag in lags if lag.batches > threshold]
    urls = webhook_urls()
    if not behind or not urls:
        return bool(behind)
    run_id = str(flow_run.id or "")
    now = datetime.now(UTC).isoformat()
    for lag in behind:
        notice = RunNotice(
            id=str(uuid.uuid5(LAG_NOTICE_NAMESPACE, f"{run_id}/{lag.target}")),
            flow="replicate",
            flow_run_id=run_id,
            flow_run_name=str(flow_run.name or ""),
            batch=None,
            state="LAGGING",
            state_name="Lagging",
            message=f"{lag.target} lags by {lag.batches} batches ({lag.bytes} bytes)",
            summary=lag.as_dict(),
            time=now,
        )
        send_notice(notice, urls)
    return True


def _rows(summary: ReplicateSummary) -> list[tuple[str, str]]:
    rows = [
        (f"{r.target} {r.batch}", f"{r.status}, {r.sent} sent, {r.sent_bytes} bytes")
        for r in summary.reports
        if r.status != "already"
    ]
    for lag in summary.lags:
        rows.append((f"lag {lag.target}", f"{lag.batches} batches, {lag.bytes} bytes"))
    return rows

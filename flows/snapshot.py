"""Stage 6: freeze the dataset as an immutable snapshot, then verify it end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.params import StoreParams
from flows.reporting import publish_summary
from flows.retry import RETRY_POLICY
from flows.summaries import SnapshotSummary
from mira.audit import audited_flow
from mira.errors import IntegrityError, ObjectNotFound
from mira.settings import Settings
from tasks.dataset import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_WORKERS,
    LockPolicy,
    SnapshotResult,
    VerifyReport,
    create_snapshot,
    load_card,
    verify_snapshot,
)


class SnapshotParams(BaseModel):
    """Which snapshot to take and how it is protected."""

    name: str = Field(description="Snapshot name; each name is used once, for ever.")
    split_name: str = Field("default", description="The split whose assignment is recorded.")
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        "COMPLIANCE", description="S3 Object Lock mode (S3 buckets with Object Lock only)."
    )
    retention_days: int = Field(DEFAULT_RETENTION_DAYS, ge=1, description="Days the lock lasts.")
    workers: int = Field(DEFAULT_WORKERS, ge=1, description="Objects hashed in parallel.")
    verify: bool = Field(True, description="Re-read and verify the snapshot once created.")
    if_exists: Literal["fail", "keep"] = Field(
        "fail",
        description="When the name is taken: fail, or keep the existing snapshot (pipeline reruns).",
    )


@task(name="create-snapshot", **RETRY_POLICY)
def create_snapshot_task(settings: Settings, params: SnapshotParams) -> SnapshotResult:
    """Hash, record and lock the dataset as it is now."""
    research = settings.research()
    return create_snapshot(
        research,
        params.name,
        split_name=params.split_name,
        lock=LockPolicy(mode=params.lock_mode, days=params.retention_days),
        workers=params.workers,
    )


@task(name="existing-snapshot", **RETRY_POLICY)
def existing_card_task(settings: Settings, name: str) -> dict[str, Any] | None:
    """The card of snapshot ``name`` when it was completed before, else None."""
    research = settings.research()
    try:
        return load_card(research, name)
    except ObjectNotFound:
        return None


@task(name="verify-snapshot", **RETRY_POLICY)
def verify_snapshot_task(settings: Settings, name: str, workers: int) -> VerifyReport:
    """Re-hash every object of the snapshot and check the manifest against its top hash."""
    research = settings.research()
    return verify_snapshot(research, name, workers=workers)


def snapshot_name(template: str) -> str:
    """Fill ``{date}`` (the run's scheduled UTC date) so a schedule names each snapshot anew."""
    if "{date}" not in template:
        return template
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time or datetime.now(UTC)
    return template.replace("{date}", start.astimezone(UTC).strftime("%Y-%m-%d"))


def _run_name() -> str:
    params = flow_run.parameters.get("params")
    name = params.get("name") if isinstance(params, dict) else getattr(params, "name", None)
    return f"snapshot/{snapshot_name(name) if name else 'unnamed'}"


@flow(name="snapshot", flow_run_name=_run_name, log_prints=False)
@audited_flow("flow snapshot")
def snapshot(params: SnapshotParams, stores: StoreParams | None = None) -> SnapshotSummary:
    """Create snapshot ``params.name`` of the research store's dataset (and verify it)."""
    settings = (stores or StoreParams()).settings()
    params = params.model_copy(update={"name": snapshot_name(params.name)})
    log = get_run_logger()
    if params.if_exists == "keep":
        existing = existing_card_task(settings, params.name)
        if existing is not None:
            log.info("snapshot %s exists (top hash %s); kept", params.name, existing["top_hash"])
            kept = SnapshotSummary(name=params.name, top_hash=existing["top_hash"], kept=True)
            publish_summary("snapshot", params.name, f"snapshot {params.name} (kept)", _rows(kept))
            return kept
    result = create_snapshot_task(settings, params)
    log.info("snapshot %s: %d objects, top hash %s", result.name, result.entries, result.top_hash)
    if result.enforcement != "s3-object-lock":  # the summary carries it; the CLI says it once
        log.info("%s", result.note)
    verified = None
    if params.verify:
        report = verify_snapshot_task(settings, result.name, params.workers)
        if not report.ok:
            raise IntegrityError(report.summary())
        verified = report.checked
    summary = SnapshotSummary(
        name=result.name, top_hash=result.top_hash, created=result, verified=verified
    )
    publish_summary("snapshot", result.name, f"snapshot {result.name}", _rows(summary))
    return summary


def _rows(summary: SnapshotSummary) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("top hash", summary.top_hash)]
    if summary.created is not None:
        rows += [
            ("objects", summary.created.entries),
            ("bytes", summary.created.bytes),
            ("protection", summary.created.enforcement),
            ("verified objects", summary.verified),
        ]
    return rows

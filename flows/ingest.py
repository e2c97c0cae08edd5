"""Stage 1: take a ready drop-zone batch, validate every object, quarantine the bad."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.params import StoreParams
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from tasks.ingest import IngestResult, ingest_batch


@task(name="ingest-batch", **RETRY_POLICY)
def ingest_batch_task(settings: Settings, batch: str) -> IngestResult:
    """Validate and record one batch (files spread over Dask inside)."""
    gateway = settings.gateway()
    return ingest_batch(
        gateway, batch, dask_address=settings.dask_address, workers=settings.dask_workers
    )


@flow(name="ingest", log_prints=False)
def ingest(batch: str, stores: StoreParams | None = None) -> IngestResult:
    """Ingest drop-zone batch ``batch`` from the gateway store; returns the batch summary."""
    settings = (stores or StoreParams()).settings()
    result = ingest_batch_task(settings, batch)
    log = get_run_logger()
    if result.already_done:
        log.info("batch %s was ingested before; nothing to do", batch)
    log.info(
        "batch %s: %d accepted, %d quarantined, %d duplicates",
        batch,
        result.accepted,
        sum(result.quarantined.values()),
        result.duplicates,
    )
    return result

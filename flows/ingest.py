"""Stage 1: take a ready drop-zone batch, validate every object, quarantine the bad."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.params import StoreParams
from flows.reporting import publish_summary, run_name
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from tasks.ingest import IngestResult, gateway_names_hidden, ingest_batch


@task(name="ingest-batch", **RETRY_POLICY)
def ingest_batch_task(settings: Settings, batch: str) -> IngestResult:
    """Validate and record one batch (files spread over Dask inside)."""
    gateway = settings.gateway()
    with gateway_names_hidden(gateway, batch):
        return ingest_batch(
            gateway,
            batch,
            dask_address=settings.dask_address,
            workers=settings.dask_workers,
            max_decoded_bytes=settings.ingest_max_decoded_bytes,
        )


@flow(name="ingest", flow_run_name=run_name("ingest"), log_prints=False)
def ingest(batch: str, stores: StoreParams | None = None) -> IngestResult:
    """Ingest drop-zone batch ``batch`` from the gateway store; returns the batch summary.

    Args:
        batch: The drop-zone batch: its folder name under ``dropzone/`` on the gateway.
        stores: Where the stores are; empty fields use the worker's MIRA_* settings.
    """
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
    publish_summary(
        "ingest",
        batch,
        f"ingest of batch {batch}" + (" (done before)" if result.already_done else ""),
        [
            ("objects", result.files),
            ("accepted", result.accepted),
            ("quarantined (by reason)", dict(result.quarantined)),
            ("duplicates", result.duplicates),
            ("bytes accepted", result.bytes),
        ],
    )
    return result

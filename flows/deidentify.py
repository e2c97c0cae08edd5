"""Stage 2: de-identify an ingested batch; publish what is clean, hold the rest for review."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.params import StoreParams
from flows.reporting import publish_summary, run_name
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from tasks.deid import DeidStageResult, deidentify_batch, held_summary, policy_for
from tasks.ingest import gateway_names_hidden


@task(name="deidentify-batch", **RETRY_POLICY)
def deidentify_batch_task(settings: Settings, batch: str) -> DeidStageResult:
    """De-identify, scan and publish one batch (files spread over Dask inside)."""
    gateway = settings.gateway()
    with gateway_names_hidden(gateway, batch):
        return deidentify_batch(
            gateway,
            settings.research(),
            batch,
            settings.deid_key(),
            policy_for(settings.deid_profile),
            dask_address=settings.dask_address,
            workers=settings.dask_workers,
        )


@flow(name="deidentify", flow_run_name=run_name("deidentify"), log_prints=False)
def deidentify(batch: str, stores: StoreParams | None = None) -> DeidStageResult:
    """De-identify ingested batch ``batch`` into the research store; a file whose output the
    scan flags is held as phi-suspect for review (`mira quarantine`), the rest is published.

    Args:
        batch: The drop-zone batch: its folder name under ``dropzone/`` on the gateway.
        stores: Where the stores are; empty fields use the worker's MIRA_* settings.
    """
    settings = (stores or StoreParams()).settings()
    result = deidentify_batch_task(settings, batch)
    get_run_logger().info(
        "batch %s: %d instances, %d slides de-identified, %d scrubbed, %d duplicates, %s%s",
        batch,
        result.instances,
        result.slides,
        result.scrubbed,
        result.duplicates,
        held_summary(result.quarantined, result.files),
        " (done before)" if result.already_done else "",
    )
    publish_summary(
        "deidentify",
        batch,
        f"de-identification of batch {batch}" + (" (done before)" if result.already_done else ""),
        [
            ("DICOM instances", result.instances),
            ("slides", result.slides),
            ("burned-in text blanked", result.scrubbed),
            ("duplicates", result.duplicates),
            ("held for review (phi-suspect)", result.quarantined.get("phi-suspect", 0)),
            ("quarantined (by reason)", dict(result.quarantined)),
            ("profile", result.profile),
        ],
    )
    return result

"""Stage 2: de-identify an ingested batch; publish it whole to the research store, or nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, get_run_logger, task

from flows.params import StoreParams
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from storage import open_store
from tasks.deid import DeidPolicy, DeidStageResult, deidentify_batch, load_policy


def policy_of(settings: Settings) -> DeidPolicy:
    """The project's profile file when configured, else the default profile."""
    return load_policy(settings.deid_profile) if settings.deid_profile else DeidPolicy.default()


@task(name="deidentify-batch", **RETRY_POLICY)
def deidentify_batch_task(settings: Settings, batch: str) -> DeidStageResult:
    """De-identify, scan and publish one batch (files spread over Dask inside)."""
    s3 = settings.s3_config()
    return deidentify_batch(
        open_store(settings.gateway_url, s3),
        open_store(settings.research_url, s3),
        batch,
        settings.deid_key(),
        policy_of(settings),
        dask_address=settings.dask_address,
        workers=settings.dask_workers,
    )


@flow(name="deidentify", log_prints=False)
def deidentify(batch: str, stores: StoreParams | None = None) -> dict[str, Any]:
    """De-identify ingested batch ``batch`` into the research store; fails on any PHI hit."""
    settings = (stores or StoreParams()).settings()
    result = deidentify_batch_task(settings, batch)
    get_run_logger().info(
        "batch %s: %d instances, %d slides de-identified, %d scrubbed, quarantined %s%s",
        batch,
        result.instances,
        result.slides,
        result.scrubbed,
        result.quarantined or "none",
        " (done before)" if result.already_done else "",
    )
    return dataclasses.asdict(result)

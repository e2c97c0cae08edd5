"""The drop-zone sensor flow: announce every ready batch to Prefect exactly once.

The protocol (claim, emit, mark) is ``tasks.ingest.announce``; this module runs it as a flow
for the scheduled ``dropzone-sensor`` deployment, or as a long-running watcher.
"""

from __future__ import annotations

import logging
import threading

from prefect import flow, get_run_logger, task

from flows.params import StoreParams
from mira.settings import Settings
from tasks.ingest import Announcement, BatchRef, announce_batch, pending_batches

WATCH_INTERVAL_S = 60.0

log = logging.getLogger(__name__)


@task(name="list-pending-batches", retries=2, retry_delay_seconds=5, persist_result=False)
def pending_batches_task(settings: Settings) -> list[BatchRef]:
    """Ready batches not yet announced (one drop-zone listing, one announcements listing)."""
    return pending_batches(settings.gateway())


@task(name="announce-batch", retries=2, retry_delay_seconds=5, persist_result=False)
def announce_batch_task(
    settings: Settings, ref: BatchRef, stores: StoreParams | None
) -> Announcement:
    """Announce one batch; safe to retry, since claim and event id make it idempotent."""
    return announce_batch(settings.gateway(), ref, stores.model_dump() if stores else None)


@flow(name="dropzone-sensor", log_prints=False)
def dropzone_sensor(stores: StoreParams | None = None) -> list[str]:
    """Announce each new ready batch of the drop zone once; returns the batches announced."""
    settings = (stores or StoreParams()).settings()
    refs = pending_batches_task(settings)
    announced = [announce_batch_task(settings, ref, stores) for ref in refs]
    get_run_logger().info(
        "%d new ready batches announced: %s",
        len(announced),
        ", ".join(a.batch for a in announced) or "-",
    )
    return [a.batch for a in announced]


def watch_dropzone(
    stores: StoreParams | None = None,
    interval_s: float = WATCH_INTERVAL_S,
    stop: threading.Event | None = None,
) -> None:
    """Scan the drop zone every ``interval_s`` seconds until ``stop`` is set (no flow runs).

    For a site that wants a long-running sensor process instead of the scheduled deployment;
    the same claim and event id keep it exactly-once next to a scheduled sensor.
    """
    stop = stop or threading.Event()
    settings = (stores or StoreParams()).settings()
    gateway = settings.gateway()
    while not stop.is_set():
        try:
            for ref in pending_batches(gateway):
                payload = stores.model_dump() if stores else None
                log.info("announced batch %s", announce_batch(gateway, ref, payload).batch)
        except Exception as err:  # the next scan retries; a watcher must outlive a bad minute
            log.error("drop-zone scan failed: %s", err)
        stop.wait(interval_s)

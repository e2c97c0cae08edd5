"""Announcing ready batches to Prefect exactly once: the claim/emit/mark protocol of the sensor.

Each ready batch of the gateway drop zone becomes one ``mira.batch.ready`` event (resource
``mira.batch.<name>``); the ``ingest-on-upload`` deployment's trigger turns it into one
pipeline run. Exactly once, across repeated scans, restarts and concurrent sensors:

1. *claim*: exclusive create of ``events/batch-ready/<batch>/claim.json`` on the gateway store
   (atomic on a local disk and on S3), which records the event id;
2. *emit* the event with a deterministic id (uuid5 of the gateway URL and the batch name) and
   wait until the server confirms receipt;
3. *mark* it emitted: ``events/batch-ready/<batch>/emitted.json``.

A scan skips batches marked emitted (one listing, no per-batch reads). A batch claimed but not
marked (its sensor died between 1 and 3) is emitted again with the same id: the Prefect
server drops an event id it has already seen, so its trigger still fires once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mira.errors import AlreadyExists
from storage import Store, join_key
from tasks import layout
from tasks.ingest.dropzone import BatchRef, find_ready_batches
from tasks.ingest.runs import claimed_batches

if TYPE_CHECKING:  # Prefect is imported when a batch is announced, not by every ingest import
    from prefect.events import Event

BATCH_READY = "mira.batch.ready"
CLAIM_NAME = "claim.json"
EMITTED_NAME = "emitted.json"
EVENT_NAMESPACE = uuid.UUID("5d1c7a1e-3f0b-5b8e-9a57-6d6972610002")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Announcement:
    """One batch announced by a scan; ``repeated`` when an unconfirmed claim was re-emitted."""

    batch: str
    event_id: str
    repeated: bool


def batch_event_id(gateway: Store, batch: str) -> uuid.UUID:
    """The one event id a batch of this gateway is ever announced with."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{gateway.url.rstrip('/')}/{batch}")


def announced_batches(gateway: Store) -> set[str]:
    """Batches whose announcement the server confirmed, from one listing."""
    root = f"{layout.ANNOUNCEMENTS}/"
    return {
        info.key[len(root) :].split("/")[0]
        for info in gateway.list(layout.ANNOUNCEMENTS)
        if info.key.startswith(root) and info.key.endswith(f"/{EMITTED_NAME}")
    }


def pending_batches(gateway: Store) -> list[BatchRef]:
    """Ready batches of the drop zone that were never announced nor run (a batch that
    ``mira run`` or the UI already started is not announced again)."""
    done = announced_batches(gateway) | claimed_batches(gateway)
    return [ref for ref in find_ready_batches(gateway) if ref.name not in done]


def batch_ready_event(
    gateway: Store, ref: BatchRef, stores: Mapping[str, Any] | None, event_id: uuid.UUID
) -> Event:
    """The ``mira.batch.ready`` event of ``ref``; its payload carries what the pipeline needs."""
    from prefect.events import Event
    from prefect.runtime import flow_run as current_flow_run

    related = []
    if run_id := current_flow_run.id:
        related.append(
            {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "sensor"}
        )
    return Event(
        id=event_id,
        event=BATCH_READY,
        resource={
            "prefect.resource.id": f"mira.batch.{ref.name}",
            "prefect.resource.name": ref.name,
            "mira.gateway": gateway.url,
        },
        related=related,
        payload={
            "batch": ref.name,
            "location": gateway.url_of(ref.prefix),
            "marker": ref.marker,
            "files": ref.file_count,
            "manifest_sha256": ref.manifest_sha256,
            "stores": dict(stores) if stores else None,
        },
    )


def send_event(event: Event) -> None:
    """Emit ``event`` to the configured Prefect API and wait until the server confirms it."""
    from prefect.events.clients import get_events_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def _send() -> None:
        async with get_events_client(checkpoint_every=1) as client:
            await client.emit(event)

    run_coro_as_sync(_send())


def announce_batch(gateway: Store, ref: BatchRef, stores: Mapping[str, Any] | None) -> Announcement:
    """Claim, emit and mark one batch (see the module docstring for why in this order)."""
    from prefect.runtime import flow_run as current_flow_run

    event_id = batch_event_id(gateway, ref.name)
    folder = join_key(layout.ANNOUNCEMENTS, ref.name)
    record: dict[str, Any] = {
        "batch": ref.name,
        "event": BATCH_READY,
        "event_id": str(event_id),
        "claimed_at": _now(),
        "sensor_flow_run": current_flow_run.id,
    }
    try:
        gateway.write_json(join_key(folder, CLAIM_NAME), record, exclusive=True)
        repeated = False
    except AlreadyExists:
        repeated = True
        log.warning("batch %s was claimed but never confirmed; emitting it again", ref.name)
    send_event(batch_ready_event(gateway, ref, stores, event_id))
    gateway.write_json(join_key(folder, EMITTED_NAME), {**record, "emitted_at": _now()})
    return Announcement(batch=ref.name, event_id=str(event_id), repeated=repeated)


def _now() -> str:
    return datetime.now(UTC).isoformat()

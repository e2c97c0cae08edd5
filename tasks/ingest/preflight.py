"""What a pipeline run checks before any work or server start: the batch, and both stores.

A run that would fail in its first minute fails in its first second instead, with one line:
the batch is not in the drop zone or is still uploading, or a store does not answer (wrong
endpoint, missing bucket, refused credentials). The secret is checked by ``Settings.deid_key``.
"""

from __future__ import annotations

from mira.errors import ObjectNotFound
from storage import Store
from tasks import layout
from tasks.ingest.dropzone import find_ready_batches, load_batch


def check_batch(gateway: Store, batch: str) -> None:
    """The batch is in the drop zone and completely uploaded; else an error naming the ready ones."""
    try:
        load_batch(gateway, batch)
    except ObjectNotFound as err:
        ready = [ref.name for ref in find_ready_batches(gateway)]
        hint = f"ready batches: {', '.join(ready[:10])}" if ready else "no batch is ready"
        raise ObjectNotFound(f"{err} ({hint}; check --gateway / MIRA_GATEWAY_URL)") from None


def check_store_answers(store: Store) -> None:
    """One listing: a store that is down, missing or refusing us fails here, not mid-run."""
    next(iter(store.list(f"{layout.CATALOG}/")), None)


def check_pipeline_inputs(gateway: Store, research: Store, batch: str) -> None:
    """Everything a pipeline run of ``batch`` needs from the stores, before it starts."""
    check_batch(gateway, batch)
    check_store_answers(research)

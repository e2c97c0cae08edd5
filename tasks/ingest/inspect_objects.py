"""Inspecting a batch's objects: inline for a few, as coarse Dask tasks for many.

Each object is read once at the version it has now (where the store keeps versions), hashed
and checked by ``sniff.inspect_object``; only small records come back, never file contents.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage import Store
from storage.base import SpecialKind
from tasks.ingest.dropzone import BatchContents
from tasks.ingest.entries import special_inspection
from tasks.ingest.inspection import DEFAULT_MAX_DECODED_BYTES, Inspection
from tasks.ingest.sniff import inspect_object

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

WorkItem = tuple[str, str, int, str | None]  # gateway key, path in the batch, size, manifest SHA


IN_MEMORY_BYTES = 16 * 1024 * 1024  # smaller objects are fetched once, in one GET


INLINE_MAX_FILES = 50  # below this, starting a LocalCluster costs more than it saves


MIN_FILES_PER_TASK = 25


MAX_FILES_PER_TASK = 200


TARGET_TASKS = 32


TASK_RETRIES = 2


@dataclass(frozen=True)
class InspectedObject:
    """One object of the batch and its inspection; ``path`` is relative to the batch folder.
    ``special`` says what a link or special file is (it was never opened)."""

    path: str
    inspection: Inspection
    special: SpecialKind | None = None
    version_id: str | None = None  # the version inspected, where the store keeps versions


def inspect_group(
    store: Store,
    items: Sequence[WorkItem],
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> list[InspectedObject]:
    """Inspect a group of objects (one Dask task); returns small records, never file contents.

    On a versioned store each object is read at the version it has now, and that version is
    recorded, so later stages read exactly the bytes that were inspected and hashed.
    """
    inspected: list[InspectedObject] = []
    for key, path, size, expected in items:
        version = store.info(key).version_id if store.supports_versions else None
        if size <= IN_MEMORY_BYTES:
            inspection = inspect_object(
                store.read_bytes(key, version), expected, max_decoded_bytes=max_decoded_bytes
            )
        else:  # hashed in one streaming pass, then only the headers are read again
            with store.open_read(key, version) as stream:
                inspection = inspect_object(stream, expected, max_decoded_bytes=max_decoded_bytes)
        inspected.append(InspectedObject(path, inspection, version_id=version))
    return inspected


def inspect_batch_objects(
    gateway: Store,
    contents: BatchContents,
    dask_address: str,
    workers: int,
    progress: Progress | None,
    max_decoded_bytes: int,
) -> list[InspectedObject]:
    manifest = contents.manifest or {}
    work: list[WorkItem] = []
    for info in contents.objects:
        path = contents.relative_path(info.key)
        entry = manifest.get(path)
        work.append((info.key, path, info.size, entry.sha256 if entry else None))
    special = [
        InspectedObject(
            contents.relative_path(entry.key), special_inspection(entry.kind), entry.kind
        )
        for entry in contents.special
    ]
    if len(work) < INLINE_MAX_FILES:
        return [*_inspect_inline(gateway, work, progress, max_decoded_bytes), *special]
    return [
        *_inspect_on_dask(gateway, work, dask_address, workers, progress, max_decoded_bytes),
        *special,
    ]


def _inspect_inline(
    gateway: Store, work: Sequence[WorkItem], progress: Progress | None, max_decoded_bytes: int
) -> list[InspectedObject]:
    inspected: list[InspectedObject] = []
    for item in work:
        inspected.extend(inspect_group(gateway, [item], max_decoded_bytes))
        if progress is not None:
            progress(len(inspected), len(work))
    return inspected


def _inspect_on_dask(
    gateway: Store,
    work: Sequence[WorkItem],
    dask_address: str,
    workers: int,
    progress: Progress | None,
    max_decoded_bytes: int,
) -> list[InspectedObject]:
    from distributed import as_completed

    from tasks.parallel import dask_client

    size = files_per_task(len(work))
    groups = [list(work[start : start + size]) for start in range(0, len(work), size)]
    inspected: list[InspectedObject] = []
    with dask_client(dask_address, workers) as client:
        log.info("inspecting %d objects in %d Dask tasks", len(work), len(groups))
        stores = [gateway] * len(groups)
        limits = [max_decoded_bytes] * len(groups)
        futures = client.map(
            inspect_group, stores, groups, limits, pure=False, retries=TASK_RETRIES
        )
        for future in as_completed(futures):
            inspected.extend(future.result())
            if progress is not None:
                progress(len(inspected), len(work))
    return inspected


def files_per_task(count: int) -> int:
    """Files per Dask task: coarse enough to amortise scheduling, fine enough to spread out."""
    return max(MIN_FILES_PER_TASK, min(MAX_FILES_PER_TASK, math.ceil(count / TARGET_TASKS)))

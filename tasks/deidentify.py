"""Stage 2: de-identify an ingested batch and publish it to the research store.

Every accepted object is de-identified on Dask into a staging area on the gateway side, and each
output is scanned for the identifiers of its own input. Only when the whole batch is clean are
the outputs copied to the research store and the catalog parts written (the catalog part is the
commit: downstream stages see the batch only through it). A file the engine refuses is
quarantined and the rest goes on; a PHI hit publishes nothing and fails the stage.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import tifffile

from mira.errors import DeidentificationError, InvalidInput, ObjectNotFound, PhiLeak
from storage import Store, join_key
from tasks import catalog
from tasks.cluster import dask_client
from tasks.deid import DeidPolicy, deidentify_dicom, deidentify_slide, scan_for_phi
from tasks.deid_rows import instance_row, slide_row
from tasks.ingest import read_accepted
from tasks.quarantine import QuarantineEntry, quarantine

log = logging.getLogger(__name__)

DEID_PREFIX = "deid"
SUMMARY_NAME = "summary.json"
INLINE_MAX_FILES = 50
FILES_PER_TASK = 100


@dataclass(frozen=True)
class WorkItem:
    """One accepted object to de-identify (gateway key and its path within the batch)."""

    key: str
    path: str
    format: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Outcome:
    """What became of one object: a staged output with its catalog row, a refusal, or hits."""

    item: WorkItem
    research_key: str | None = None
    staging_key: str | None = None
    row: dict[str, Any] | None = None
    refusal: str | None = None
    detail: str = ""
    phi_hits: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeidStageResult:
    """Counts of one batch's de-identification, safe to show on the research side."""

    batch: str
    instances: int = 0
    slides: int = 0
    scrubbed: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    phi_hits: int = 0
    already_done: bool = False
    profile: str = ""


@dataclass(frozen=True)
class DeidJob:
    """Everything a Dask task needs to de-identify a group of objects (pickles small)."""

    gateway: Store
    batch: str
    key: bytes
    policy: DeidPolicy


def deidentify_batch(
    gateway: Store,
    research: Store,
    batch: str,
    key: bytes,
    policy: DeidPolicy,
    *,
    dask_address: str = "",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DeidStageResult:
    """De-identify every accepted object of ``batch`` and publish the batch, or nothing."""
    summary_key = join_key(DEID_PREFIX, batch, SUMMARY_NAME)
    if gateway.exists(summary_key):
        return DeidStageResult(**{**gateway.read_json(summary_key), "already_done": True})
    items = accepted_items(gateway, batch)
    job = DeidJob(gateway=gateway, batch=batch, key=key, policy=policy)
    outcomes = run_groups(job, items, dask_address, workers, progress)
    leaks = [o for o in outcomes if o.phi_hits]
    if leaks:
        _discard(gateway, job, outcomes, leaks)
        raise PhiLeak(
            f"batch {batch}: identifiers found in {len(leaks)} de-identified outputs "
            f"({'; '.join(h for o in leaks[:3] for h in o.phi_hits[:2])}); nothing was published"
        )
    for outcome in outcomes:
        if outcome.refusal:
            _quarantine(gateway, batch, outcome, outcome.refusal, outcome.detail)
    result = _publish(gateway, research, batch, outcomes, policy)
    gateway.write_json(summary_key, asdict(result))
    gateway.delete_prefix(join_key(DEID_PREFIX, batch, "staging"))
    return result


def accepted_items(gateway: Store, batch: str) -> list[WorkItem]:
    """The objects ingest accepted for ``batch``; the batch must have been ingested."""
    try:
        table = read_accepted(gateway, batch)
    except ObjectNotFound as err:
        raise InvalidInput(
            f"batch {batch} has not been ingested; run the ingest stage first"
        ) from err
    return [
        WorkItem(
            key=r["key"], path=r["path"], format=r["format"], sha256=r["sha256"], size=r["size"]
        )
        for r in table.select(["key", "path", "format", "sha256", "size"]).to_pylist()
    ]


def run_groups(
    job: DeidJob,
    items: Sequence[WorkItem],
    dask_address: str,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> list[Outcome]:
    """De-identify the items in coarse groups, inline for small batches, on Dask otherwise."""
    report = progress or (lambda done, total: None)
    slides = [i for i in items if i.format == "slide"]
    dicoms = [i for i in items if i.format != "slide"]
    groups = [[s] for s in slides] + _chunks(dicoms, FILES_PER_TASK)
    if len(items) < INLINE_MAX_FILES and len(slides) <= 1:
        outcomes: list[Outcome] = []
        for group in groups:
            outcomes += deidentify_group(job, group)
            report(len(outcomes), len(items))
        return outcomes
    with dask_client(dask_address, workers) as client:
        futures = client.map(deidentify_group, [job] * len(groups), groups, pure=False)
        outcomes = []
        for future in futures:
            outcomes += future.result()
            report(len(outcomes), len(items))
    return outcomes


def _chunks(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    count = max(1, math.ceil(len(items) / size))
    step = math.ceil(len(items) / count) if items else 1
    return [list(items[i : i + step]) for i in range(0, len(items), step)]


def deidentify_group(job: DeidJob, group: Sequence[WorkItem]) -> list[Outcome]:
    """De-identify, scan and stage each object of a group (runs in a Dask worker)."""
    return [deidentify_item(job, item) for item in group]


def deidentify_item(job: DeidJob, item: WorkItem) -> Outcome:
    """One object: refuse what cannot be made safe, scan the output, stage it on the gateway."""
    try:
        if item.format == "slide":
            return _deidentify_slide(job, item)
        return _deidentify_dicom(job, item)
    except DeidentificationError as err:
        return Outcome(item=item, refusal="deid-refused", detail=str(err))
    except InvalidInput as err:
        return Outcome(item=item, refusal="deid-invalid", detail=str(err))


def path_identifiers(path: str) -> set[str]:
    """Folder and file names of an upload often carry names or accession numbers."""
    parts = PurePosixPath(path).parts
    return set(parts) | {PurePosixPath(path).stem}


def _deidentify_dicom(job: DeidJob, item: WorkItem) -> Outcome:
    result = deidentify_dicom(job.gateway.read_bytes(item.key), job.key, job.policy)
    research_key = join_key(
        "dicom",
        result.patient_id,
        result.study_uid,
        result.series_uid,
        f"{result.sop_instance_uid}.dcm",
    )
    identifiers = set(result.identifiers) | path_identifiers(item.path)
    hits = scan_for_phi([(research_key, result.data)], identifiers)
    staging_key = join_key(DEID_PREFIX, job.batch, "staging", research_key)
    info = job.gateway.write_bytes(staging_key, result.data)
    row = instance_row(job.batch, research_key, result, info.size, info.sha256 or "", job.policy)
    return Outcome(
        item=item,
        research_key=research_key,
        staging_key=staging_key,
        row=row,
        phi_hits=tuple(str(h) for h in hits),
    )


def _deidentify_slide(job: DeidJob, item: WorkItem) -> Outcome:
    with tempfile.NamedTemporaryFile() as output, job.gateway.open_read(item.key) as source:
        result = deidentify_slide(source, output, job.key, job.policy)
        research_key = join_key("slides", f"{result.slide_id}.tiff")
        output.seek(0)
        identifiers = set(result.identifiers) | path_identifiers(item.path)
        hits = scan_for_phi([(research_key, output.read())], identifiers)
        output.seek(0)
        with tifffile.TiffFile(output) as tif:
            shape = (int(tif.pages.first.shape[0]), int(tif.pages.first.shape[1]))
        output.seek(0)
        staging_key = join_key(DEID_PREFIX, job.batch, "staging", research_key)
        info = job.gateway.write_stream(staging_key, output)
    row = slide_row(
        job.batch, research_key, result, shape, info.size, info.sha256 or "", job.policy
    )
    return Outcome(
        item=item,
        research_key=research_key,
        staging_key=staging_key,
        row=row,
        phi_hits=tuple(str(h) for h in hits),
    )


def _quarantine(gateway: Store, batch: str, outcome: Outcome, reason: str, detail: str) -> None:
    item = outcome.item
    entry = QuarantineEntry(
        batch=batch,
        path=item.path,
        reason=reason,
        detail=detail,
        sha256=item.sha256,
        size=item.size,
        detected_format=item.format,
        stage="deidentify",
    )
    quarantine(gateway, item.key, entry)


def _discard(
    gateway: Store, job: DeidJob, outcomes: Iterable[Outcome], leaks: Iterable[Outcome]
) -> None:
    """A leak: quarantine the leaking inputs and drop every staged output of the batch."""
    for outcome in leaks:
        _quarantine(gateway, job.batch, outcome, "phi-detected", "; ".join(outcome.phi_hits[:20]))
    gateway.delete_prefix(join_key(DEID_PREFIX, job.batch, "staging"))


def _publish(
    gateway: Store, research: Store, batch: str, outcomes: Sequence[Outcome], policy: DeidPolicy
) -> DeidStageResult:
    """Copy staged outputs to the research store, then commit the batch's catalog parts."""
    published = [o for o in outcomes if o.staging_key and o.research_key and o.row]
    for outcome in published:
        assert outcome.staging_key and outcome.research_key and outcome.row
        if (
            research.exists(outcome.research_key)
            and research.sha256(outcome.research_key) == outcome.row["sha256"]
        ):
            continue  # a rerun after a crash: already there, byte for byte
        with gateway.open_read(outcome.staging_key) as staged:
            research.write_stream(outcome.research_key, staged)
    instances = [o.row for o in published if o.row and o.item.format != "slide"]
    slides = [o.row for o in published if o.row and o.item.format == "slide"]
    catalog.write_part(research, "instances", batch, _table(instances, catalog.INSTANCE_SCHEMA))
    catalog.write_part(research, "slides", batch, _table(slides, catalog.SLIDE_SCHEMA))
    refusals = Counter(o.refusal for o in outcomes if o.refusal)
    return DeidStageResult(
        batch=batch,
        instances=len(instances),
        slides=len(slides),
        scrubbed=sum(1 for r in instances if r["pixels_scrubbed"]),
        quarantined=dict(refusals),
        profile=policy.name,
    )


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)

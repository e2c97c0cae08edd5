"""Stage 2: de-identify an ingested batch and publish it to the research store.

Every accepted object is de-identified on Dask into a staging area on the gateway side, and each
output is scanned for the identifiers of its own input. Clean outputs are copied to the research
store and the catalog parts written (the catalog part is the commit: downstream stages see the
batch only through it). A file the engine refuses is quarantined and the rest goes on; a file
whose output the scan flags is held as ``phi-suspect`` (its output kept on the gateway side for a
person to release or drop, :mod:`tasks.deid.suspects`) and the rest goes on too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import tifffile

from mira import __version__
from mira.errors import DeidentificationError, IntegrityError, InvalidInput, ObjectNotFound, PhiLeak
from storage import ObjectInfo, Store, join_key, open_store
from tasks import layout
from tasks.deid.dicom import deidentify_dicom
from tasks.deid.dicom_wsi import associated_image_refusal
from tasks.deid.duplicates import (
    DUPLICATES_NAME,
    duplicate_records,
    instance_uids,
    published_instances,
    settle_instances,
)
from tasks.deid.holds import hold_suspects, quarantine_outcome
from tasks.deid.ingested import CHANGED_AFTER_INGEST, IngestRecord, ingested_copy, read_ingested
from tasks.deid.names import batch_name_hits, coded_values, path_identifiers
from tasks.deid.phiscan import collect_identifiers, read_output, scan_for_phi, scan_slide_file
from tasks.deid.profile import DeidPolicy
from tasks.deid.pseudonyms import pseudonymize_patient_id
from tasks.deid.rows import instance_row, slide_row
from tasks.deid.slide import deidentify_slide
from tasks.deid.suspects import PHI_SUSPECT
from tasks.parallel import dask_client, parallel_map

if TYPE_CHECKING:  # the catalog (pyarrow, DuckDB) is loaded by the batch stage, not mira deid
    import pyarrow as pa

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
INLINE_MAX_FILES = 50
FILES_PER_TASK = 100
LOCAL_FILES_PER_TASK = 25
PUBLISH_THREADS = 8
SNIFF_THREADS = 8


@dataclass(frozen=True)
class WorkItem:
    """One accepted object to de-identify (gateway key and its path within the batch), with
    the SHA-256 (and S3 version, where ingest recorded one) that every read is checked against."""

    key: str
    path: str
    format: str
    sha256: str
    size: int
    version_id: str | None = None
    patient_link: str = ""  # a slide's patient as uploaded (PHI): mapped like PatientID

    @property
    def record(self) -> IngestRecord:
        return IngestRecord(self.sha256, self.version_id)


@dataclass(frozen=True)
class Outcome:
    """What became of one object: a staged output with its catalog row, a refusal, or hits."""

    item: WorkItem
    research_key: str | None = None
    row: dict[str, Any] | None = None
    refusal: str | None = None
    detail: str = ""
    phi_hits: tuple[str, ...] = ()  # where the scan found identifiers (attribute paths)
    batch_name_hits: int = 0  # identifiers of this input found in the batch name
    duplicate_of: str = ""  # the input published for this one (same UID, same output bytes)


@dataclass(frozen=True)
class DeidStageResult:
    """Counts of one batch's de-identification, safe to show on the research side."""

    batch: str
    instances: int = 0
    slides: int = 0
    files: int = 0  # inputs considered: published + duplicates + quarantined
    scrubbed: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    phi_hits: int = 0
    already_done: bool = False
    profile: str = ""


@dataclass(frozen=True)
class DeidJob:
    """Everything a Dask task needs to de-identify a group of objects (pickles small).

    Inputs are read from ``source``; outputs are staged in ``staging`` (gateway side) under
    their research-store keys until the whole set has passed the PHI scan.
    """

    source: Store
    staging: Store
    batch: str
    key: bytes = field(repr=False)  # Dask logs a failed task's repr: never the secret
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
    """De-identify every accepted object of ``batch`` and publish what is clean; what is not
    is quarantined with its reason (a scan hit as ``phi-suspect``, held for review)."""
    summary_key = join_key(layout.DEID, batch, SUMMARY_NAME)
    if gateway.exists(summary_key):
        return DeidStageResult(**{**gateway.read_json(summary_key), "already_done": True})
    items = accepted_items(gateway, batch)
    staging = gateway.child(join_key(layout.DEID, batch, "staging"))
    job = DeidJob(source=gateway, staging=staging, batch=batch, key=key, policy=policy)
    outcomes = run_groups(job, items, dask_address, workers, progress)
    check_batch_name(job, outcomes)
    outcomes = hold_suspects(job, outcomes, gateway)
    known = published_instances(research, batch, instance_uids(outcomes))
    outcomes = settle_instances(outcomes, research, known)
    record_duplicates(gateway, join_key(layout.DEID, batch, DUPLICATES_NAME), outcomes)
    for outcome in outcomes:
        if outcome.refusal and outcome.refusal != PHI_SUSPECT:  # held already
            quarantine_outcome(gateway, gateway, outcome, outcome.refusal, outcome.detail, batch)
    published = publish(staging, research, outcomes)
    result = _commit_catalog(research, batch, published, outcomes, policy)
    gateway.write_json(summary_key, asdict(result))
    staging.delete_prefix("")
    return result


def deidentify_folder(
    source: Store,
    output: Store,
    quarantine_store: Store,
    key: bytes,
    policy: DeidPolicy,
    *,
    dask_address: str = "",
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DeidStageResult:
    """De-identify every DICOM file and slide below ``source`` into ``output`` (``mira deid``).

    Files that cannot be made safe, and every other kind of file, go to ``quarantine_store``
    with a reason; a file whose output the scan flags is held there as ``phi-suspect``. The
    work runs on the Dask scheduler at ``dask_address`` when one is given, else on ``workers``
    local processes (0: one per core), never on a LocalCluster started for one command.
    """
    items = parallel_map(
        lambda info: _folder_item(source, info), list(source.list()), SNIFF_THREADS
    )
    unsupported = [i for i in items if i.format not in ("dicom", "slide")]
    items = [i for i in items if i.format in ("dicom", "slide")]
    with tempfile.TemporaryDirectory(prefix="mira-deid-") as tmp:
        staging = open_store(tmp)
        job = DeidJob(source=source, staging=staging, batch="", key=key, policy=policy)
        outcomes = run_groups(
            job, items, dask_address, workers, progress, local_processes=not dask_address
        )
        outcomes = hold_suspects(job, outcomes, quarantine_store, publish_to=output.url)
        known = published_instances(output, uids=instance_uids(outcomes))
        outcomes = settle_instances(outcomes, output, known)
        record_duplicates(quarantine_store, DUPLICATES_NAME, outcomes)
        for item in unsupported:
            quarantine_outcome(
                quarantine_store,
                source,
                Outcome(item=item),
                "unsupported-type",
                f"not DICOM or a slide ({item.format})",
            )
        for outcome in outcomes:
            if outcome.refusal and outcome.refusal != PHI_SUSPECT:  # held already
                quarantine_outcome(
                    quarantine_store, source, outcome, outcome.refusal, outcome.detail
                )
        published = publish(staging, output, outcomes)
    refusals = refusal_counts(outcomes)
    if unsupported:
        refusals["unsupported-type"] = len(unsupported)
    result = _result("", published, refusals, policy, outcomes)
    return replace(result, files=result.files + len(unsupported))


def _folder_item(source: Store, info: ObjectInfo) -> WorkItem:
    """A file of a ``mira deid`` folder as work, its format sniffed from its first bytes."""
    from tasks.ingest import sniff_format

    with source.open_read(info.key) as stream:
        kind = sniff_format(stream.read(4096))
    fmt = {
        "dicom": "dicom",
        "dicom-no-preamble": "dicom",
        "svs": "slide",
        "tiff": "slide",
        "bigtiff": "slide",
    }
    return WorkItem(
        key=info.key, path=info.key, format=fmt.get(kind, kind), sha256="", size=info.size
    )


def accepted_items(gateway: Store, batch: str) -> list[WorkItem]:
    """The objects ingest accepted for ``batch``; the batch must have been ingested."""
    from tasks.ingest import read_accepted  # the ingest stage and its catalog: batch runs only

    try:
        table = read_accepted(gateway, batch)
    except ObjectNotFound as err:
        raise InvalidInput(
            f"batch {batch} has not been ingested; run the ingest stage first"
        ) from err
    columns = ["key", "path", "format", "sha256", "size", "patient_id"]
    columns += ["version_id"] if "version_id" in table.column_names else []
    return [_work_item(row) for row in table.select(columns).to_pylist()]


def _work_item(row: dict[str, Any]) -> WorkItem:
    """An accepted row as work; a slide keeps the patient its upload linked it to."""
    patient = row.pop("patient_id")
    link = (patient or "") if row["format"] == "slide" else ""
    return WorkItem(**row, patient_link=link)


def run_groups(
    job: DeidJob,
    items: Sequence[WorkItem],
    dask_address: str,
    workers: int,
    progress: Callable[[int, int], None] | None,
    *,
    local_processes: bool = False,
) -> list[Outcome]:
    """De-identify the items in coarse groups: inline for small batches, else on Dask, or on a
    pool of local processes with ``local_processes`` (``mira deid``: no cluster to start)."""
    report = progress or (lambda done, total: None)
    slides = [i for i in items if i.format == "slide"]
    dicoms = [i for i in items if i.format != "slide"]
    # Local processes take smaller groups: no scheduler to spare, and the last group's tail
    # (one core idle while the other finishes) stays short.
    size = LOCAL_FILES_PER_TASK if local_processes else FILES_PER_TASK
    groups = [[s] for s in slides] + _chunks(dicoms, size)
    if len(items) < INLINE_MAX_FILES and len(slides) <= 1:
        outcomes: list[Outcome] = []
        for group in groups:
            outcomes += deidentify_group(job, group)
            report(len(outcomes), len(items))
        return outcomes
    if local_processes:
        from tasks.deid.local_run import run_in_processes

        return run_in_processes(
            deidentify_group, job, groups, workers, lambda done: report(done, len(items))
        )
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
        refusal, detail = "deid-refused", str(err)
    except InvalidInput as err:
        refusal, detail = "deid-invalid", str(err)
    except IntegrityError as err:
        refusal, detail = CHANGED_AFTER_INGEST, str(err)
    # Nothing of a refused input is published, but the batch name is: check it all the same.
    hits = len(batch_name_hits(job.batch, _input_identifiers(job, item)))
    return Outcome(item=item, refusal=refusal, detail=detail, batch_name_hits=hits)


def _input_identifiers(job: DeidJob, item: WorkItem) -> set[str]:
    """The identifiers of an input the engine refused, where they can be read at all."""
    if not job.batch:
        return set()
    try:
        with job.source.open_read(item.key) as stream:
            if item.format != "slide":
                return collect_identifiers(stream.read())
            with tifffile.TiffFile(stream) as tif:
                return collect_identifiers(tif)
    except Exception:  # an unreadable input has no identifiers to offer
        return set()


def _deidentify_dicom(job: DeidJob, item: WorkItem) -> Outcome:
    data = read_ingested(job.source, item.key, item.record)
    dropped = associated_image_refusal(data)  # a whole-slide LABEL, OVERVIEW, or text thumbnail
    if dropped is not None:
        return Outcome(item=item, refusal=dropped[0], detail=dropped[1])
    result = deidentify_dicom(data, job.key, job.policy)
    research_key = layout.instance_key(
        result.patient_id, result.study_uid, result.series_uid, result.sop_instance_uid
    )
    # The output is read back from its bytes once, for the scan, its coded values and its row.
    output = read_output(result.data)
    codes = coded_values(output if output is not None else result.data)
    identifiers = set(result.identifiers) | path_identifiers(item.path, codes)
    parsed = {research_key: output} if output is not None else None
    hits = scan_for_phi([(research_key, result.data)], identifiers, parsed)
    size, sha256 = stage_output(job.staging, research_key, result.data)
    row = instance_row(job.batch, research_key, result, size, sha256, job.policy, output)
    return Outcome(
        item=item,
        research_key=research_key,
        row=row,
        phi_hits=tuple(h.location for h in hits),
        batch_name_hits=len(batch_name_hits(job.batch, result.identifiers)),
    )


def stage_output(staging: Store, key: str, data: bytes) -> tuple[int, str]:
    """Stage one output; returns its size and SHA-256. Local staging is scratch space that a
    rerun rebuilds, so it is written without the fsync that a published object gets."""
    if not staging.is_local:
        info = staging.write_bytes(key, data)
        return info.size, info.sha256 or ""
    staging.write_many({key: data})
    return len(data), hashlib.sha256(data).hexdigest()


def _deidentify_slide(job: DeidJob, item: WorkItem) -> Outcome:
    with (
        tempfile.NamedTemporaryFile() as output,
        ingested_copy(job.source, item.key, item.record) as source,
    ):
        result = deidentify_slide(source, output, job.key, job.policy)
        research_key = layout.slide_key(result.slide_id)
        output.flush()
        identifiers = set(result.identifiers) | path_identifiers(item.path) | _link_ids(item)
        hits = scan_slide_file(research_key, output.name, identifiers)
        output.seek(0)
        with tifffile.TiffFile(output) as tif:
            shape = (int(tif.pages.first.shape[0]), int(tif.pages.first.shape[1]))
        output.seek(0)
        info = job.staging.write_stream(research_key, output)
    patient = pseudonymize_patient_id(item.patient_link, job.key) if item.patient_link else ""
    row = slide_row(
        job.batch, research_key, result, shape, info.size, info.sha256 or "", job.policy, patient
    )
    return Outcome(
        item=item,
        research_key=research_key,
        row=row,
        phi_hits=tuple(h.location for h in hits),
        batch_name_hits=len(batch_name_hits(job.batch, result.identifiers | _link_ids(item))),
    )


def _link_ids(item: WorkItem) -> set[str]:
    """The linked patient's original ID, searched for in the output like the slide's own PHI."""
    return {item.patient_link.strip("\x00 ")} if item.patient_link else set()


def check_batch_name(job: DeidJob, outcomes: Sequence[Outcome]) -> None:
    """Refuse the batch when its name holds an identifier of its own files: the name is copied
    into catalog part names and rows, quality paths, Data Docs, snapshot names and manifests.
    The message does not repeat the name (it is PHI)."""
    naming = [o for o in outcomes if o.batch_name_hits]
    if not naming:
        return
    job.staging.delete_prefix("")
    raise PhiLeak(
        f"the batch name holds identifiers (a name, ID or date) of {len(naming)} of its own "
        "files, and the research store would carry it in catalog part names, quality paths, "
        "snapshot names and manifests; nothing was published. Upload its files again under a "
        "neutral batch name (e.g. batch-0042) after removing this batch's ingest record "
        "(ingest/<batch>/ on the gateway), or they count as duplicates of this one"
    )


def publish(staging: Store, research: Store, outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Copy staged outputs to the research store; objects already there byte for byte stay.
    The copies run on a few threads: each mostly waits on the disk (fsync) or the network."""
    published = [o for o in outcomes if o.research_key and o.row]

    def copy(outcome: Outcome) -> None:
        assert outcome.research_key and outcome.row
        key = outcome.research_key
        if research.exists(key) and research.sha256(key) == outcome.row["sha256"]:
            return  # a rerun after a crash
        with staging.open_read(key) as staged:
            research.write_stream(key, staged)
        staging.delete(key)  # here, on this thread, rather than in one pass at the end

    parallel_map(copy, published, PUBLISH_THREADS)
    return published


def _commit_catalog(
    research: Store,
    batch: str,
    published: Sequence[Outcome],
    outcomes: Sequence[Outcome],
    policy: DeidPolicy,
) -> DeidStageResult:
    """Write the batch's catalog parts: the commit that makes the batch visible downstream."""
    from tasks.dataset import INSTANCE_SCHEMA, SLIDE_SCHEMA, summarise_instances, write_part

    instances = [o.row for o in published if o.row and o.item.format != "slide"]
    slides = [o.row for o in published if o.row and o.item.format == "slide"]
    instance_table = _table(instances, INSTANCE_SCHEMA)
    series, studies = summarise_instances(instance_table)
    write_part(research, "series", batch, series)
    write_part(research, "studies", batch, studies)
    write_part(research, "slides", batch, _table(slides, SLIDE_SCHEMA))
    result = _result(batch, published, refusal_counts(outcomes), policy, outcomes)
    write_part(research, "batches", batch, [batch_row(result)])
    # Instances last: that part is the commit downstream stages look for.
    write_part(research, "instances", batch, instance_table)
    return result


def batch_row(result: DeidStageResult) -> dict[str, Any]:
    """The ``batches`` row: counts only (nothing from the gateway side but numbers)."""
    return {
        "batch": result.batch,
        "instances": result.instances,
        "slides": result.slides,
        "scrubbed": result.scrubbed,
        "quarantined_at_deid": sum(result.quarantined.values()),
        "deid_profile": result.profile,
        "mira_version": __version__,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def refusal_counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """How many inputs were refused, by reason."""
    return dict(Counter(o.refusal for o in outcomes if o.refusal))


def record_duplicates(store: Store, key: str, outcomes: Sequence[Outcome]) -> None:
    """Write the duplicate records (gateway side: they name input paths), when there are any."""
    records = duplicate_records(outcomes)
    if records:
        store.write_json(key, records)


def _result(
    batch: str,
    published: Sequence[Outcome],
    refusals: Mapping[str, int],
    policy: DeidPolicy,
    outcomes: Sequence[Outcome],
) -> DeidStageResult:
    rows = [o.row for o in published if o.row]
    instances = [r for r, o in zip(rows, published, strict=True) if o.item.format != "slide"]
    return DeidStageResult(
        batch=batch,
        instances=len(instances),
        slides=len(rows) - len(instances),
        files=len(outcomes),
        scrubbed=sum(1 for r in instances if r["pixels_scrubbed"]),
        quarantined=dict(refusals),
        duplicates=sum(1 for o in outcomes if o.duplicate_of),
        phi_hits=sum(1 for o in outcomes if o.refusal == PHI_SUSPECT),
        profile=policy.name,
    )


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)

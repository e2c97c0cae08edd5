"""Ingest one drop-zone batch on the gateway: inspect every object, accept or quarantine it.

Accepted objects are listed in ``ingest/<batch>/accepted.parquet``; bad ones are copied (never
moved) to ``quarantine/<batch>/<path>`` next to a ``.reason.json`` record; ``summary.json`` is
written last and exclusively, so it is the batch's commit record. A batch with a summary is done:
running it again reads the summary back and writes nothing. Nothing is deleted from the drop zone.

Inspection runs on Dask in coarse groups of files (inline for small batches); the decisions that
need the whole picture (duplicate UIDs, within the batch and against earlier batches) are taken
afterwards, in path order, so the outcome does not depend on which worker finished first.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mira import __version__
from mira.errors import AlreadyExists, InvalidInput, ObjectNotFound
from storage import Store, join_key
from tasks import layout
from tasks.ingest.dicom_series import hold_back_incomplete_slides
from tasks.ingest.dropzone import (
    BatchContents,
    BatchRef,
    batch_fingerprint,
    check_batch_name,
    find_ready_batches,
    list_batch,
    list_batch_special,
    load_batch,
)
from tasks.ingest.entries import escape_name, name_rejection
from tasks.ingest.inspect_objects import InspectedObject, inspect_batch_objects
from tasks.ingest.inspection import DEFAULT_MAX_DECODED_BYTES, Rejection
from tasks.ingest.quarantine_zone import QuarantineEntry, quarantine, write_reason

__all__ = [
    "BatchRef",
    "IngestResult",
    "find_ready_batches",
    "ingest_batch",
    "is_ingested",
    "read_accepted",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

ACCEPTED_NAME = "accepted.parquet"
SUMMARY_NAME = "summary.json"

ACCEPTED_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("path", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("version_id", pa.string()),  # the version read, on a versioned bucket; else null
        ("format", pa.string()),
        ("detected_format", pa.string()),
        ("sop_class_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("patient_id", pa.string()),
        ("modality", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("frames", pa.int32()),
        ("transfer_syntax", pa.string()),
        ("burned_in_annotation", pa.string()),
        ("slide_width", pa.int64()),
        ("slide_height", pa.int64()),
        ("slide_levels", pa.int32()),
        ("slide_mpp", pa.float64()),
        ("slide_vendor", pa.string()),
    ]
)


@dataclass(frozen=True)
class IngestResult:
    """What ingesting a batch did (or, with ``already_done``, what an earlier run did)."""

    batch: str
    accepted: int
    quarantined: Mapping[str, int]  # reason code -> count
    duplicates: int
    bytes: int  # bytes accepted
    already_done: bool
    accepted_key: str
    files: int = 0  # data objects in the batch: accepted + quarantined + duplicates
    summary_key: str = ""


@dataclass(frozen=True)
class IngestedObject:
    """Where an identity (SOPInstanceUID, or SHA-256 for a slide) was first accepted."""

    batch: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Verdicts:
    """The batch's objects sorted into accepted, quarantined and harmless duplicates."""

    accepted: tuple[InspectedObject, ...]
    quarantined: tuple[tuple[InspectedObject, Rejection], ...]
    duplicates: tuple[dict[str, str], ...]


def ingest_batch(
    gateway: Store,
    batch: str,
    *,
    dropzone: str = layout.DROPZONE,
    dask_address: str = "",
    workers: int = 0,
    progress: Progress | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> IngestResult:
    """Ingest a ready batch (or return the recorded result of an earlier ingest of it).

    ``max_decoded_bytes`` is the most that checking one object may decode (a slide tile, an
    inflated DICOM data set); an object that would decode to more is a ``decompression-bomb``.

    Raises ``ObjectNotFound`` when the batch does not exist and ``InvalidInput`` when it is still
    uploading or changed after it was ingested. Storage failures propagate; nothing is committed
    then, and running again starts over.
    """
    check_batch_name(batch)
    if is_ingested(gateway, batch):
        return _recorded_result(gateway, batch, dropzone)
    contents = load_batch(gateway, batch, dropzone)
    started = _now()
    log.info("ingesting batch %s: %d objects", batch, len(contents.objects))
    inspected = inspect_batch_objects(
        gateway, contents, dask_address, workers, progress, max_decoded_bytes
    )
    verdicts = judge(batch, inspected, contents, ingested_objects(gateway, exclude=batch))
    summary = _record_outcome(gateway, contents, verdicts, started)
    return _commit(gateway, summary, dropzone)


def _record_outcome(
    gateway: Store, contents: BatchContents, verdicts: Verdicts, started: str
) -> dict[str, Any]:
    """Write the quarantine copies and the accepted list; returns the summary to commit."""
    batch = contents.ref.name
    for item, rejection in verdicts.quarantined:
        _quarantine(gateway, batch, contents.ref.prefix, item, rejection)
    accepted_key = join_key(layout.INGEST, batch, ACCEPTED_NAME)
    links = {path: e.patient_id for path, e in (contents.manifest or {}).items() if e.patient_id}
    table = accepted_table(batch, contents.ref.prefix, verdicts.accepted, links)
    accepted_info = gateway.write_bytes(accepted_key, _parquet_bytes(table))
    return _summary(contents, verdicts, accepted_key, accepted_info.sha256, started)


def _commit(gateway: Store, summary: dict[str, Any], dropzone: str) -> IngestResult:
    """Publish the summary exclusively: the one step that marks the batch as ingested."""
    batch = str(summary["batch"])
    try:
        gateway.write_json(join_key(layout.INGEST, batch, SUMMARY_NAME), summary, exclusive=True)
    except AlreadyExists:  # a concurrent run committed first: its record stands
        log.warning("batch %s was committed by another run meanwhile", batch)
        return _recorded_result(gateway, batch, dropzone)
    log.info(
        "batch %s: %d accepted, %s quarantined, %d duplicates",
        batch,
        summary["accepted"],
        summary["quarantined"] or "none",
        summary["duplicates"],
    )
    return _result_from_summary(summary, already_done=False)


def is_ingested(gateway: Store, batch: str) -> bool:
    """Whether the batch has been ingested (its summary, the commit record, exists)."""
    check_batch_name(batch)
    return gateway.exists(join_key(layout.INGEST, batch, SUMMARY_NAME))


def read_accepted(gateway: Store, batch: str) -> pa.Table:
    """The accepted objects of an ingested batch (PHI side: patient IDs and paths as dropped)."""
    summary_key = join_key(layout.INGEST, batch, SUMMARY_NAME)
    if not is_ingested(gateway, batch):
        raise ObjectNotFound(
            f"batch {batch!r} has not been ingested: no {gateway.url_of(summary_key)}"
        )
    data = gateway.read_bytes(join_key(layout.INGEST, batch, ACCEPTED_NAME))
    return pq.read_table(pa.BufferReader(data))


def ingested_objects(gateway: Store, exclude: str = "") -> dict[str, IngestedObject]:
    """Identities accepted by committed batches (those with a summary), other than ``exclude``."""
    known: dict[str, IngestedObject] = {}
    for info in gateway.list(layout.INGEST):
        parts = info.key.split("/")
        if len(parts) != 3 or parts[0] != layout.INGEST or parts[2] != SUMMARY_NAME:
            continue
        if parts[1] == exclude:
            continue
        table = read_accepted(gateway, parts[1])
        columns = ("batch", "path", "sha256", "format", "sop_instance_uid")
        for row in table.select(list(columns)).to_pylist():
            identity = _identity_of(row["format"], row["sop_instance_uid"], row["sha256"])
            known.setdefault(identity, IngestedObject(row["batch"], row["path"], row["sha256"]))
    return known


def _identity_of(kind: str | None, sop_instance_uid: str | None, sha256: str) -> str:
    """DICOM instances are the same object when their SOPInstanceUID is; slides when their bytes are."""
    if kind == "dicom" and sop_instance_uid:
        return f"uid:{sop_instance_uid}"
    return f"sha256:{sha256}"


def judge(
    batch: str,
    inspected: Iterable[InspectedObject],
    contents: BatchContents,
    known: Mapping[str, IngestedObject],
) -> Verdicts:
    """Accept, quarantine or skip each object, in path order (first occurrence wins)."""
    seen = dict(known)
    accepted: list[InspectedObject] = []
    quarantined: list[tuple[InspectedObject, Rejection]] = []
    duplicates: list[dict[str, str]] = []
    for item in sorted(inspected, key=lambda i: i.path):
        rejection = _rejection(contents, item)
        if rejection is not None:
            quarantined.append((item, rejection))
            continue
        header = item.inspection.dicom
        uid = header.sop_instance_uid if header is not None else None
        identity = _identity_of(item.inspection.kind, uid, item.inspection.sha256)
        first = seen.get(identity)
        if first is None:
            seen[identity] = IngestedObject(batch, item.path, item.inspection.sha256)
            accepted.append(item)
        elif first.sha256 == item.inspection.sha256:
            duplicates.append(_duplicate_record(item, first, uid))
        else:
            quarantined.append((item, _conflict(uid or "", first)))
    # a DICOM whole-slide series is one slide: all of its instances go, or none
    accepted, held = hold_back_incomplete_slides(accepted, quarantined)
    quarantined.extend(held)
    return Verdicts(tuple(accepted), tuple(quarantined), tuple(duplicates))


def _rejection(contents: BatchContents, item: InspectedObject) -> Rejection | None:
    """Why an object is quarantined: what it is (a link), its name, the manifest, its content."""
    if item.special is not None:
        return item.inspection.rejection
    return (
        name_rejection(item.path)
        or _manifest_rejection(contents, item)
        or item.inspection.rejection
        or _link_rejection(contents, item)
    )


def _link_rejection(contents: BatchContents, item: InspectedObject) -> Rejection | None:
    """A manifest ``patient_id`` on anything but a slide: a DICOM file names its own patient."""
    entry = (contents.manifest or {}).get(item.path)
    if entry is None or entry.patient_id is None or item.inspection.kind == "slide":
        return None
    detail = (
        "the manifest links this file to a patient (patient_id), but only a slide takes a "
        "link: a DICOM file names its patient in its own PatientID"
    )
    return Rejection("patient-link-not-slide", detail)


def _manifest_rejection(contents: BatchContents, item: InspectedObject) -> Rejection | None:
    """An object the manifest does not list, or of another size than it promises (an upload
    cut short or replaced: the size says which, where the checksum only says "different")."""
    if contents.manifest is None:
        return None
    entry = contents.manifest.get(item.path)
    if entry is None:
        return Rejection(
            "not-in-manifest", "the batch has a manifest.json that does not list this file"
        )
    if entry.size != item.inspection.size:
        detail = f"{item.inspection.size} bytes where the manifest promises {entry.size}"
        return Rejection("size-mismatch", detail)
    return None


def _duplicate_record(
    item: InspectedObject, first: IngestedObject, uid: str | None
) -> dict[str, str]:
    return {
        "path": item.path,
        "sha256": item.inspection.sha256,
        "sop_instance_uid": uid or "",
        "first_batch": first.batch,
        "first_path": first.path,
    }


def _conflict(uid: str, first: IngestedObject) -> Rejection:
    detail = (
        f"SOPInstanceUID {uid} was already ingested with different content "
        f"(batch {first.batch}, {first.path}, SHA-256 {first.sha256})"
    )
    return Rejection("duplicate-uid-conflict", detail)


def _quarantine(
    gateway: Store, batch: str, source_prefix: str, item: InspectedObject, rejection: Rejection
) -> None:
    """Copy the object to the quarantine, under its escaped name, and record why next to it (the
    drop zone keeps it); a link or special file is never opened: only its reason is recorded."""
    opened = item.special is None
    entry = QuarantineEntry(
        batch=batch,
        path=escape_name(item.path),
        reason=rejection.reason,
        detail=rejection.detail,
        sha256=item.inspection.sha256 if opened else None,
        size=item.inspection.size if opened else None,
        detected_format=item.inspection.detected_format if opened else None,
    )
    if opened:
        quarantine(gateway, f"{source_prefix}/{item.path}", entry)
    else:
        write_reason(gateway, layout.quarantine_key(batch, entry.path), entry)


def accepted_table(
    batch: str,
    prefix: str,
    accepted: Iterable[InspectedObject],
    links: Mapping[str, str] | None = None,
) -> pa.Table:
    """One row per accepted object, with the attributes later stages rely on. ``links`` maps a
    slide's path to its patient's original ID (the manifest's ``patient_id``): a slide's
    ``patient_id`` is that link, a DICOM file's its own PatientID."""
    links = links or {}
    rows = [_accepted_row(batch, prefix, item, links.get(item.path)) for item in accepted]
    return pa.Table.from_pylist(rows, schema=ACCEPTED_SCHEMA).replace_schema_metadata(
        {"mira_version": __version__, "batch": batch}
    )


def _accepted_row(
    batch: str, prefix: str, item: InspectedObject, link: str | None
) -> dict[str, Any]:
    inspection = item.inspection
    dicom, slide = inspection.dicom, inspection.slide
    return {
        "batch": batch,
        "path": item.path,
        "key": f"{prefix}/{item.path}",
        "size": inspection.size,
        "sha256": inspection.sha256,
        "version_id": item.version_id,
        "format": inspection.kind,
        "detected_format": inspection.detected_format,
        "sop_class_uid": dicom.sop_class_uid if dicom else None,
        "sop_instance_uid": dicom.sop_instance_uid if dicom else None,
        "study_uid": dicom.study_uid if dicom else None,
        "series_uid": dicom.series_uid if dicom else None,
        "patient_id": dicom.patient_id if dicom else link,
        "modality": dicom.modality if dicom else None,
        "rows": dicom.rows if dicom else None,
        "columns": dicom.columns if dicom else None,
        "frames": dicom.frames if dicom else None,
        "transfer_syntax": dicom.transfer_syntax if dicom else None,
        "burned_in_annotation": dicom.burned_in_annotation if dicom else None,
        "slide_width": slide.width if slide else None,
        "slide_height": slide.height if slide else None,
        "slide_levels": slide.levels if slide else None,
        "slide_mpp": slide.mpp if slide else None,
        "slide_vendor": slide.vendor if slide else None,
    }


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _summary(
    contents: BatchContents,
    verdicts: Verdicts,
    accepted_key: str,
    accepted_sha256: str | None,
    started: str,
) -> dict[str, Any]:
    reasons = Counter(rejection.reason for _, rejection in verdicts.quarantined)
    return {
        "batch": contents.ref.name,
        "dropzone_prefix": contents.ref.prefix,
        "marker": contents.ref.marker,
        "manifest_sha256": contents.ref.manifest_sha256,
        "fingerprint": batch_fingerprint(contents.ref.prefix, contents.objects, contents.special),
        "files": len(contents.objects) + len(contents.special),
        "bytes_total": sum(info.size for info in contents.objects),
        "accepted": len(verdicts.accepted),
        "bytes": sum(item.inspection.size for item in verdicts.accepted),
        "quarantined": dict(sorted(reasons.items())),
        "quarantined_total": len(verdicts.quarantined),
        "quarantined_objects": [
            {"path": escape_name(item.path), "reason": rejection.reason}
            for item, rejection in verdicts.quarantined
        ],
        "duplicates": len(verdicts.duplicates),
        "duplicate_objects": list(verdicts.duplicates),
        "accepted_key": accepted_key,
        "accepted_sha256": accepted_sha256,
        "started": started,
        "finished": _now(),
        "mira_version": __version__,
    }


def _recorded_result(gateway: Store, batch: str, dropzone: str) -> IngestResult:
    """The committed result of an earlier ingest, if the drop zone still matches it."""
    summary = gateway.read_json(join_key(layout.INGEST, batch, SUMMARY_NAME))
    prefix = join_key(dropzone, batch)
    current = list_batch(gateway, prefix)
    special = list_batch_special(gateway, prefix)
    if current and batch_fingerprint(prefix, current, special) != summary.get("fingerprint"):
        raise InvalidInput(
            f"batch {batch!r} changed after it was ingested (objects added, removed or resized); "
            "drop the new files as a new batch"
        )
    return _result_from_summary(summary, already_done=True)


def _result_from_summary(summary: Mapping[str, Any], *, already_done: bool) -> IngestResult:
    batch = str(summary["batch"])
    return IngestResult(
        batch=batch,
        accepted=int(summary["accepted"]),
        quarantined={str(k): int(v) for k, v in summary["quarantined"].items()},
        duplicates=int(summary["duplicates"]),
        bytes=int(summary["bytes"]),
        already_done=already_done,
        accepted_key=str(summary["accepted_key"]),
        files=int(summary["files"]),
        summary_key=join_key(layout.INGEST, batch, SUMMARY_NAME),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

"""Immutable, verifiable dataset snapshots: create (hash, manifest, lock, card) and export.

The dataset is every catalog instance and slide that is not excluded (``excluded_keys``),
plus each slide's pyramid objects, each with the split of its patient. ``create_snapshot``
hashes every object at a pinned version, writes the manifest exclusively, locks the
manifest, the card and every listed object version, and records one top hash (a Merkle
root) in the card, then the versions and SHA-256s of card and manifest in a locked,
exclusively created index entry (``tasks.dataset.versions``). Checking a snapshot (verify,
diff, reading) is ``tasks.dataset.reader`` and ``tasks.dataset.verify``.

Protection depends on the store: S3 Object Lock is WORM; a local folder only makes files
read-only (weaker: anyone with filesystem rights can undo it; the top hash is the proof).
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mira import __version__
from mira.errors import AlreadyExists, IntegrityError, InvalidInput
from storage import ObjectInfo, Retention, Store
from storage.base import LockMode
from tasks import layout
from tasks.dataset import catalog, split
from tasks.dataset.manifest import (
    BATCH_ROWS,
    LEAF_COLUMNS,
    MANIFEST_SCHEMA,
    card_key,
    export_prefix,
    manifest_bytes,
    manifest_key,
    top_hash,
)
from tasks.dataset.reader import load_card, load_manifest
from tasks.dataset.verify import DEFAULT_WORKERS, list_folder, observe, unlisted_keys
from tasks.dataset.versions import index_entry, own_versions, write_index
from tasks.parallel import Progress, parallel_map

log = logging.getLogger(__name__)
DEFAULT_RETENTION_DAYS = 365
ENFORCEMENT_NOTES = {
    "s3-object-lock": "S3 Object Lock ({mode}) on the manifest, the card and every listed object "
    "version until {until}: nobody can delete or overwrite those versions before then.",
    "local-read-only": "Local store: the files were made read-only and mira refuses to delete or "
    "overwrite them. This is WEAKER THAN WORM: anyone with filesystem rights can change them. "
    "The top hash (keep a copy elsewhere) and `mira snapshot verify` are the protection.",
    "none": "This S3 bucket has no Object Lock: nothing prevents deletion or overwriting. "
    "The top hash (keep a copy elsewhere) and `mira snapshot verify` are the protection.",
}
QA_SQL = """
WITH latest AS (
    SELECT key, arg_max(status, updated_at) AS status FROM review GROUP BY key
), item_checks AS (
    SELECT key, bool_or(NOT passed AND severity = 'fail') AS failed,
           bool_or(NOT passed) AS flagged FROM quality WHERE key <> '' GROUP BY key
), batch_checks AS (
    SELECT batch, bool_or(NOT passed AND severity = 'fail') AS failed,
           bool_or(NOT passed) AS flagged FROM quality WHERE key = '' GROUP BY batch
)
SELECT i.key, i.kind, i.unit AS patient_id, s.split, i.modality,
    CASE WHEN l.status = 'accepted' THEN 'accepted'
         WHEN coalesce(c.failed OR b.failed, c.failed, b.failed, false) THEN 'failed'
         WHEN coalesce(c.flagged OR b.flagged, c.flagged, b.flagged, false) THEN 'warned'
         WHEN c.key IS NOT NULL OR b.batch IS NOT NULL THEN 'passed'
         ELSE 'unchecked' END AS qa_status,
    i.batch, i.mira_version, i.sha256 AS catalog_sha256, i.bytes AS catalog_size, i.deid_profile
FROM items i
LEFT JOIN assignment s ON i.unit = s.patient_id
LEFT JOIN latest l ON i.key = l.key
LEFT JOIN item_checks c ON i.key = c.key
LEFT JOIN batch_checks b ON i.batch = b.batch
ORDER BY i.key
"""


@dataclass(frozen=True)
class LockPolicy:
    """How long and how strictly a snapshot's objects are protected."""

    mode: LockMode = "COMPLIANCE"
    days: int = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        if self.mode not in ("COMPLIANCE", "GOVERNANCE") or self.days < 1:
            raise InvalidInput(f"invalid lock policy: mode {self.mode!r}, {self.days} days")


@dataclass(frozen=True)
class SnapshotResult:
    """What ``create_snapshot`` published."""

    name: str
    entries: int
    bytes: int
    top_hash: str
    manifest_url: str
    card_url: str
    index_url: str
    enforcement: str
    note: str
    locked_objects: int


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (absent ones null), for SQL over any catalog."""
    length = table.num_rows
    columns = [
        pc.cast(table.column(f.name), f.type)
        if f.name in table.column_names
        else pa.nulls(length, f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)


def collect_dataset(store: Store, split_name: str) -> pa.Table:
    """The dataset's catalog items with split, QA status and lineage (no pyramids yet)."""
    items = split.dataset_items(store)
    assignment = split.split_part(store, split_name)
    if assignment is None:
        raise InvalidInput(f"no split named {split_name!r}: run `mira split` first")
    connection = duckdb.connect()
    try:
        connection.register("items", items)
        connection.register("assignment", assignment.select(["patient_id", "split"]))
        connection.register(
            "review", _conform(catalog.read_table(store, "review"), catalog.REVIEW_SCHEMA)
        )
        connection.register(
            "quality", _conform(catalog.read_table(store, "quality"), catalog.QUALITY_SCHEMA)
        )
        relation = connection.sql(QA_SQL)
        rows = relation.to_arrow_table() if relation is not None else pa.table({})
    finally:
        connection.close()
    unassigned = rows.filter(pc.is_null(rows["split"]))
    if unassigned.num_rows:
        patients = sorted(set(unassigned["patient_id"].to_pylist()))
        raise InvalidInput(
            f"{len(patients)} patients (e.g. {patients[0]}) have no split in {split_name!r}: "
            f"run `mira split --name {split_name}` again"
        )
    return rows


def add_pyramids(store: Store, items: pa.Table, workers: int) -> pa.Table:
    """Append each slide's pyramid objects, inheriting the slide's split, QA and lineage."""
    slides = items.filter(pc.equal(items["kind"], "slide")).to_pylist()
    found = parallel_map(
        lambda s: list_folder(store, layout.pyramid_key(s["key"])), slides, workers
    )
    rows = [
        dict(slide, key=key, kind="pyramid", catalog_sha256=None, catalog_size=None)
        for slide, keys in zip(slides, found, strict=True)
        for key in keys
    ]
    if not rows:
        return items
    return pa.concat_tables([items, pa.Table.from_pylist(rows, schema=items.schema)])


def build_manifest(rows: pa.Table) -> pa.Table:
    """The manifest: ``MANIFEST_SCHEMA`` columns of ``rows``, sorted by key, keys unique."""
    manifest = rows.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).sort_by("key")
    manifest = manifest.combine_chunks()
    keys = manifest.column("key").combine_chunks()
    if len(keys) > 1 and pc.any(pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py():
        raise InvalidInput("the dataset lists the same key twice")
    return manifest


def _pin_objects(store: Store, rows: pa.Table, workers: int, progress: Progress | None) -> pa.Table:
    """Hash every object at its current version; fail when one is missing or not as cataloged."""
    sizes: list[int] = []
    digests: list[str] = []
    versions: list[str | None] = []
    missing: list[str] = []
    differ: list[str] = []
    for start in range(0, rows.num_rows, BATCH_ROWS):
        part = rows.slice(start, BATCH_ROWS)
        seen = parallel_map(
            lambda k: observe(store, k),
            part["key"].to_pylist(),
            workers,
            progress,
            "hash objects",
            (start, rows.num_rows),
        )
        for found, want in zip(seen, part["catalog_sha256"].to_pylist(), strict=True):
            if not found.found:
                missing.append(found.key)
            elif want and want != found.sha256:
                differ.append(found.key)
            sizes.append(found.size)
            digests.append(found.sha256)
            versions.append(found.version_id)
    if missing or differ:
        named = ", ".join((missing + differ)[:5])
        raise IntegrityError(
            f"{len(missing)} cataloged objects are missing and {len(differ)} differ from their "
            f"catalog SHA-256 (e.g. {named}); fix the store before taking a snapshot"
        )
    return (
        rows.append_column("size", pa.array(sizes, pa.int64()))
        .append_column("sha256", pa.array(digests, pa.string()))
        .append_column("version_id", pa.array(versions, pa.string()))
    )


def covered_folders(manifest: pa.Table) -> list[str]:
    """The folders a snapshot covers: its series folders and pyramid folders.

    ``verify`` reports objects that appear inside them. Slides share ``slides/``, so a slide
    is covered by its own key only; new patients, studies and series are growth, not tamper.
    """
    folders = set()
    for key, kind in zip(manifest["key"].to_pylist(), manifest["kind"].to_pylist(), strict=True):
        if kind == "instance":
            folders.add(posixpath.dirname(key))
        elif kind == "pyramid":
            folders.add(key[: key.index(".ome.zarr/") + len(".ome.zarr")])
    return sorted(folders)


def enforcement_of(store: Store) -> str:
    """What protects a snapshot on this store: Object Lock, read-only files, or nothing."""
    if store.supports_object_lock:
        return "s3-object-lock"
    return "local-read-only" if store.is_local else "none"


def lock_version(store: Store, key: str, version_id: str | None, retention: Retention) -> None:
    """Put ``retention`` on one object version, never shortening or weakening an existing one."""
    current = store.get_retention(key, version_id)
    stronger = current is not None and current.mode in ("COMPLIANCE", retention.mode)
    if current is not None and stronger and current.until >= retention.until:
        return
    store.set_retention(key, retention, version_id)


def count_manifest(manifest: pa.Table) -> dict[str, Any]:
    """Patients, items (instances and slides), objects and bytes: in all, by split, by modality."""
    items = manifest.filter(pc.not_equal(manifest["kind"], "pyramid"))
    by_split: dict[str, dict[str, Any]] = {}
    aggregates = [("key", "count"), ("size", "sum"), ("patient_id", "count_distinct")]
    for row in manifest.group_by("split").aggregate(aggregates).to_pylist():
        by_split[row["split"]] = {
            "objects": row["key_count"],
            "bytes": row["size_sum"],
            "patients": row["patient_id_count_distinct"],
            "items_by_modality": {},
        }
    for row in items.group_by(["split", "modality"]).aggregate([("key", "count")]).to_pylist():
        by_split[row["split"]]["items_by_modality"][row["modality"] or "-"] = row["key_count"]
    by_modality = {
        row["modality"] or "-": {
            "items": row["key_count"],
            "patients": row["patient_id_count_distinct"],
        }
        for row in items.group_by("modality")
        .aggregate([("key", "count"), ("patient_id", "count_distinct")])
        .to_pylist()
    }
    return {
        "patients": pc.count_distinct(manifest["patient_id"]).as_py(),
        "items": items.num_rows,
        "objects": manifest.num_rows,
        "bytes": int(pc.sum(manifest["size"]).as_py() or 0),
        "by_split": dict(sorted(by_split.items())),
        "by_modality": dict(sorted(by_modality.items())),
    }


def quality_summary(store: Store, rows: pa.Table) -> dict[str, Any]:
    """QA status counts of the items, and pass/fail counts of each check that covered them."""
    items = rows.filter(pc.not_equal(rows["kind"], "pyramid"))
    statuses = items.group_by("qa_status").aggregate([("key", "count")]).to_pylist()
    quality = _conform(catalog.read_table(store, "quality"), catalog.QUALITY_SCHEMA)
    mine = pc.or_(
        pc.is_in(quality["key"], items["key"].combine_chunks()),
        pc.and_(
            pc.equal(quality["key"], ""),
            pc.is_in(quality["batch"], pc.unique(items["batch"].combine_chunks())),
        ),
    )
    checks: dict[tuple[str, str], dict[str, Any]] = {}
    grouped = quality.filter(mine).group_by(["check", "severity", "passed"])
    for row in grouped.aggregate([([], "count_all")]).to_pylist():
        entry = checks.setdefault(
            (row["check"], row["severity"]),
            {"check": row["check"], "severity": row["severity"], "passed": 0, "failed": 0},
        )
        entry["passed" if row["passed"] else "failed"] += row["count_all"]
    return {
        "qa_status": {r["qa_status"]: r["key_count"] for r in sorted(statuses, key=str)},
        "checks": [checks[k] for k in sorted(checks)],
    }


def build_card(
    store: Store, name: str, rows: pa.Table, manifest_info: ObjectInfo, split_name: str
) -> dict[str, Any]:
    """The dataset card's provenance: manifest, hashing, split, de-identification, quality."""
    items = rows.filter(pc.not_equal(rows["kind"], "pyramid"))
    profiles = items.group_by("deid_profile").aggregate([("key", "count")]).to_pylist()
    assignment = split.split_part(store, split_name)
    first = (
        assignment.slice(0, 1).to_pylist()[0]
        if assignment is not None and assignment.num_rows
        else {}
    )
    return {
        "snapshot": name,
        "store": store.url,
        "mira_version": __version__,
        "manifest": {
            "key": manifest_info.key,
            "sha256": manifest_info.sha256,
            "version_id": manifest_info.version_id,
            "entries": rows.num_rows,
            "object_bytes": int(pc.sum(rows["size"]).as_py() or 0),
            "columns": list(LEAF_COLUMNS),
        },
        "hashing": {
            "object_hash": "SHA-256 of the object version's bytes",
            "leaf": "SHA-256(0x00 || NUL-joined manifest columns, null as empty, ints in decimal)",
            "node": "SHA-256(0x01 || left || right); an odd last node is promoted unchanged",
            "top_hash": "Merkle root over the leaves in key order; SHA-256('') when empty",
        },
        "split": {
            "name": split_name,
            "seed": first.get("seed"),
            "ratios": first.get("ratios"),
            "stratified_by": first.get("stratified_by"),
        },
        "deid_profiles": {(r["deid_profile"] or "unknown"): r["key_count"] for r in profiles},
        "quality": quality_summary(store, rows),
    }


def create_snapshot(
    store: Store,
    name: str,
    *,
    split_name: str = split.DEFAULT_SPLIT,
    lock: LockPolicy | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> SnapshotResult:
    """Publish snapshot ``name`` of the dataset as it is now; an existing name is refused."""
    lock = lock or LockPolicy()
    if any(own_versions(store, layout.check_snapshot_name(name)).values()):
        hidden = "" if store.exists(card_key(name)) else " (hidden by delete markers)"
        raise AlreadyExists(
            f"snapshot {name!r} already exists{hidden}: {store.url_of(card_key(name))}"
        )
    created = now or datetime.now(UTC)
    rows = add_pyramids(store, collect_dataset(store, split_name), workers)
    rows = _pin_objects(store, rows, workers, progress)
    manifest = build_manifest(rows)
    root = top_hash(manifest)
    folders = covered_folders(manifest)
    ignored = unlisted_keys(store, folders, set(manifest["key"].to_pylist()), workers)
    enforcement = enforcement_of(store)
    retention = Retention(lock.mode, created + timedelta(days=lock.days))
    protect = retention if enforcement != "none" else None
    data = manifest_bytes(manifest)
    manifest_info = store.write_bytes(manifest_key(name), data, exclusive=True, retention=protect)
    if protect is not None:
        pinned = list(
            zip(manifest["key"].to_pylist(), manifest["version_id"].to_pylist(), strict=True)
        )
        parallel_map(
            lambda kv: lock_version(store, kv[0], kv[1], protect),
            pinned,
            workers,
            progress,
            "lock objects",
        )
    note = ENFORCEMENT_NOTES[enforcement].format(mode=lock.mode, until=retention.until.isoformat())
    card = build_card(store, name, rows, manifest_info, split_name)
    card |= {
        "created_at": created.isoformat(),
        "top_hash": root,
        "counts": count_manifest(manifest),
        "retention": {
            "mode": lock.mode if protect else None,
            "days": lock.days if protect else None,
            "until": retention.until.isoformat() if protect else None,
            "enforcement": enforcement,
            "note": note,
        },
        "coverage": {"folders": folders, "ignored_keys": ignored},
    }
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    card_info = store.write_bytes(card_key(name), text.encode(), exclusive=True, retention=protect)
    entry = index_entry(name, card_info, manifest_info, root, card["created_at"])
    index_info = write_index(store, name, entry, protect)
    log.info("snapshot %s: %d objects, top hash %s", name, manifest.num_rows, root)
    return SnapshotResult(
        name=name,
        entries=manifest.num_rows,
        bytes=int(pc.sum(manifest["size"]).as_py() or 0),
        top_hash=root,
        manifest_url=store.url_of(manifest_info.key),
        card_url=store.url_of(card_info.key),
        index_url=store.url_of(index_info.key),
        enforcement=enforcement,
        note=note,
        locked_objects=manifest.num_rows if protect else 0,
    )


@dataclass(frozen=True)
class ExportResult:
    """Where ``export_snapshot`` wrote each split's list."""

    name: str
    url: str
    files: dict[str, str]
    counts: dict[str, int]


def export_record(store: Store, entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a training job needs of one object: where it is, which version, which bytes."""
    return {
        "key": entry["key"],
        "url": store.url_of(entry["key"]),
        "version_id": entry["version_id"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "kind": entry["kind"],
        "patient_id": entry["patient_id"],
        "modality": entry["modality"],
    }


def export_snapshot(store: Store, name: str, output: Store | None = None) -> ExportResult:
    """Write ``<split>.jsonl`` per split plus ``index.json`` (default: under the snapshot).

    Files are created exclusively; an existing file with the same bytes is left as it is
    (exporting twice is a no-op), one with other bytes is an error.
    """
    card = load_card(store, name)
    manifest = load_manifest(store, name, card)
    target = output if output is not None else store.child(export_prefix(name))
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    for part in sorted(set(manifest.column("split").to_pylist())):
        rows = manifest.filter(pc.equal(manifest["split"], part)).to_pylist()
        lines = [json.dumps(export_record(store, r), sort_keys=True) for r in rows]
        key = _write_once(target, f"{part}.jsonl", ("\n".join(lines) + "\n").encode())
        files[part], counts[part] = target.url_of(key), len(rows)
    index = {
        "snapshot": name,
        "store": store.url,
        "top_hash": card["top_hash"],
        "created_at": card["created_at"],
        "splits": {s: {"file": f"{s}.jsonl", "entries": n} for s, n in counts.items()},
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    _write_once(target, "index.json", text.encode())
    return ExportResult(name=name, url=target.url, files=files, counts=counts)


def _write_once(store: Store, key: str, data: bytes) -> str:
    try:
        store.write_bytes(key, data, exclusive=True)
    except AlreadyExists:
        if store.read_bytes(key) != data:
            raise AlreadyExists(
                f"{store.url_of(key)} exists with other content; export elsewhere (--output)"
            ) from None
    return key

"""What releasing a quarantined file does: a held ``phi-suspect`` output is published exactly as
it was staged (with the catalog rows a normal publish writes); a file held for a reason that a
person can clear is copied into a new drop-zone batch and goes through the whole pipeline again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from mira.errors import IntegrityError, InvalidInput
from storage import Store, join_key
from tasks import layout
from tasks.dataset import INSTANCE_SCHEMA, SLIDE_SCHEMA, read_part, summarise_instances, write_part
from tasks.deid.duplicates import published_instances

READY_MARKER = "_READY"


def publish_held(store: Store, record: Mapping[str, Any], target: Store) -> str:
    """Publish a held output from ``store`` into ``target`` as staged; returns its key there.

    Refused when the output's key itself was flagged, when the staged bytes are not the ones
    held, or when ``target`` holds its key or its SOP Instance UID with other content. For a
    batch, the output's row is added to the batch's catalog parts (instances or slides, then
    series, studies and the batches row), so it is seen as if published with its batch.
    """
    if "path" in record.get("attributes", ()):
        raise InvalidInput(
            f"{record['path']}: the scan found an identifier in the output's own key "
            f"({record['research_key']}), which publishing would carry; drop it"
        )
    staged, key, sha256 = record["staged_key"], record["research_key"], record["staged_sha256"]
    if not store.exists(staged):
        raise InvalidInput(f"{record['path']}: the held output {staged} is gone; drop it")
    if store.sha256(staged) != sha256:
        raise IntegrityError(f"the held output {store.url_of(staged)} changed since it was staged")
    batch = str(record.get("batch") or "")
    row = dict(record["row"])
    if record.get("kind") == "instance":
        _check_uid(target, batch, key, row["sop_instance_uid"])
    if target.exists(key):
        if target.sha256(key) != sha256:
            raise InvalidInput(f"{target.url_of(key)} already holds other content; drop it")
    else:
        with store.open_read(staged) as stream:
            target.write_stream(key, stream, exclusive=True)
    if batch:
        add_catalog_row(target, batch, row, str(record.get("kind")))
    return key


def _check_uid(target: Store, batch: str, key: str, uid: str) -> None:
    published = published_instances(target, batch or None, [uid]).get(uid)
    if published is not None and published.key != key:
        raise InvalidInput(
            f"SOP Instance UID {uid} is already published as {published.key}; releasing this "
            "output would make two instances of one UID"
        )


def add_catalog_row(research: Store, batch: str, row: Mapping[str, Any], kind: str) -> None:
    """Add one released output to its batch's parts (a rerun of the release adds nothing);
    the instances part is written last, as a normal publish does."""
    table, schema = ("slides", SLIDE_SCHEMA) if kind == "slide" else ("instances", INSTANCE_SCHEMA)
    before = read_part(research, table, batch)
    rows = [r for r in (before.to_pylist() if before is not None else []) if r["key"] != row["key"]]
    merged = pa.Table.from_pylist([*rows, dict(row)], schema=schema)
    if kind == "slide":
        write_part(research, table, batch, merged)
        _update_batch_row(research, batch, "slides", merged.num_rows)
        return
    series, studies = summarise_instances(merged)
    write_part(research, "series", batch, series)
    write_part(research, "studies", batch, studies)
    _update_batch_row(research, batch, "instances", merged.num_rows)
    write_part(research, table, batch, merged)


def _update_batch_row(research: Store, batch: str, column: str, count: int) -> None:
    """The ``batches`` row counts what the catalog now lists for the batch."""
    before = read_part(research, "batches", batch)
    if before is None or not before.num_rows:
        return
    rows = before.to_pylist()
    rows[0][column] = count
    write_part(research, "batches", batch, pa.Table.from_pylist(rows, schema=before.schema))


def restage(gateway: Store, quarantined: str, batch: str, path: str) -> str:
    """Copy a quarantined file into a new drop-zone batch of its own, marked ready; returns the
    batch name. The name is derived from the item, so a release retried after a failure reuses
    it. The file then goes through ingest and every later stage like any upload."""
    if not gateway.exists(quarantined):
        raise InvalidInput(f"{batch}/{path}: the quarantine holds no copy of it to put back")
    digest = hashlib.sha256(f"{batch}/{path}".encode()).hexdigest()[:10]
    name = f"{batch}-released-{digest}"
    folder = join_key(layout.DROPZONE, name)
    gateway.copy(quarantined, join_key(folder, path))
    gateway.write_bytes(join_key(folder, READY_MARKER), b"")
    return name

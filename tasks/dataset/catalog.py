"""The catalog: Parquet tables in the research store, one part per batch, queried with DuckDB.

Layout: ``catalog/<table>/<part>.parquet``. A stage writes the part for the batch it handled
(atomically; a rerun writes the same part again, so the catalog stays idempotent), and readers
see the union of a table's parts. Listing the catalog never pages through the data objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mira.errors import InvalidInput
from storage import ObjectInfo, Store
from tasks import layout

TABLES = (
    "instances",
    "series",
    "studies",
    "slides",
    "pyramids",
    "quality",
    "review",
    "splits",
    "batches",
)
# Columns of the tables the de-identification and conversion stages write. Every value is
# de-identified: pseudonymous IDs and UIDs, shifted dates, no names.
INSTANCE_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("key", pa.string()),  # dicom/<patient>/<study>/<series>/<instance>.dcm
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("patient_id", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("sop_class_uid", pa.string()),
        ("modality", pa.string()),
        ("body_part", pa.string()),
        ("manufacturer", pa.string()),
        ("model", pa.string()),
        ("study_date", pa.string()),  # shifted per patient, YYYYMMDD
        ("pixel_spacing_row", pa.float64()),
        ("pixel_spacing_col", pa.float64()),
        ("slice_thickness", pa.float64()),
        ("slice_position", pa.float64()),  # along the slice normal, mm
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("frames", pa.int32()),
        ("transfer_syntax", pa.string()),
        ("patient_identity_removed", pa.string()),
        ("pixels_scrubbed", pa.bool_()),
        ("deid_profile", pa.string()),
        ("mira_version", pa.string()),
    ]
)
SLIDE_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("key", pa.string()),  # slides/<slide>.tiff
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("slide_id", pa.string()),
        ("patient_id", pa.string()),  # pseudonymous, empty when the upload named none
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("levels", pa.int32()),
        ("mpp", pa.float64()),
        ("magnification", pa.float64()),
        ("vendor", pa.string()),
        ("deid_profile", pa.string()),
        ("mira_version", pa.string()),
    ]
)
# The quality stage writes ``quality`` (one row per check and item; key "" for a batch-level
# expectation) and ``review`` (one row per queued item; a person's decision is a newer row for
# the same key). Split and snapshot read them only through ``excluded_keys``.
QUALITY_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("key", pa.string()),
        ("check", pa.string()),
        ("severity", pa.string()),  # fail | warn | info
        ("passed", pa.bool_()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("detail", pa.string()),
    ]
)
REVIEW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("batch", pa.string()),
        ("kind", pa.string()),  # instance | slide
        ("reasons", pa.string()),
        ("status", pa.string()),  # pending | accepted | rejected
        ("thumbnail_key", pa.string()),
        ("updated_at", pa.string()),  # ISO 8601 UTC
        ("decided_by", pa.string()),
    ]
)
_PART_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class CatalogPart:
    """One Parquet part of a catalog table."""

    table: str
    part: str
    key: str
    rows: int


def _check_names(table: str, part: str | None = None) -> None:
    if table not in TABLES:
        raise InvalidInput(f"unknown catalog table {table!r}; tables: {', '.join(TABLES)}")
    if part is not None and not _PART_NAME.match(part):
        raise InvalidInput(f"invalid catalog part name {part!r}")


def part_key(table: str, part: str) -> str:
    """The store key of one part."""
    _check_names(table, part)
    return f"{layout.CATALOG}/{table}/{part}.parquet"


def write_part(
    store: Store, table: str, part: str, rows: pa.Table | Sequence[Mapping[str, Any]]
) -> CatalogPart:
    """Publish (or replace) one part of ``table`` atomically; unchanged parts are not rewritten."""
    data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    key = part_key(table, part)
    if not data.num_columns:  # no rows and no schema: the part is simply absent
        delete_part(store, table, part)
        return CatalogPart(table=table, part=part, key=key, rows=0)
    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression="zstd")
    payload = buffer.getvalue()
    if not (store.exists(key) and store.read_bytes(key) == payload):  # reruns rewrite nothing
        store.write_bytes(key, payload)
    return CatalogPart(table=table, part=part, key=key, rows=data.num_rows)


def delete_part(store: Store, table: str, part: str) -> bool:
    """Remove one part; returns whether it existed."""
    key = part_key(table, part)
    if not store.exists(key):
        return False
    store.delete(key)
    return True


def list_parts(store: Store, table: str) -> list[ObjectInfo]:
    """The part objects of ``table``, sorted by key."""
    _check_names(table)
    return [o for o in store.list(f"{layout.CATALOG}/{table}/") if o.key.endswith(".parquet")]


def read_part(store: Store, table: str, part: str) -> pa.Table | None:
    """One part, or None when it was never written."""
    key = part_key(table, part)
    if not store.exists(key):
        return None
    return pq.read_table(io.BytesIO(store.read_bytes(key)))


def read_table(store: Store, table: str) -> pa.Table:
    """Every part of ``table`` as one Arrow table (schemas unified; empty when none)."""
    parts = [pq.read_table(io.BytesIO(store.read_bytes(o.key))) for o in list_parts(store, table)]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")


def connect_catalog(store: Store, tables: Iterable[str] = TABLES) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a table per non-empty catalog table, and no file access.

    Each table is an Arrow dataset over the Parquet parts, read lazily (only the columns and row
    groups a query needs): in place on a local store, from a local cache kept fresh by ETag for
    an S3 store, so a query costs one LIST per table, not a download of the catalog. DuckDB
    itself may then touch no file (``enable_external_access`` off, configuration locked): a
    query cannot read ``/etc/passwd`` or ``COPY`` anything out.
    """
    import pyarrow.dataset as ds  # pulls in pandas (about a second): only when a query runs

    connection = duckdb.connect()
    for table in tables:
        paths = local_part_paths(store, table)
        if paths:
            schema = pa.unify_schemas(
                [pq.read_schema(path) for path in paths], promote_options="permissive"
            )
            connection.register(table, ds.dataset(paths, schema=schema, format="parquet"))
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


@dataclass(frozen=True)
class CatalogTable:
    """One table of the catalog: its parts (one per batch, split or slide) and rows."""

    name: str
    parts: int
    rows: int


def catalog_tables(store: Store) -> list[CatalogTable]:
    """Every catalog table with its part and row counts (from the Parquet footers)."""
    found = []
    for table in TABLES:
        paths = local_part_paths(store, table)
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
        found.append(CatalogTable(table, len(paths), rows))
    return found


def has_catalog(store: Store) -> bool:
    """Whether ``store`` holds a catalog at all (a research store that has seen a batch)."""
    return next(iter(store.list(f"{layout.CATALOG}/")), None) is not None


READ_ONLY_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def check_read_only(sql: str) -> None:
    """Only queries run on the catalog (SELECT, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise InvalidInput(f"catalog query failed: {err}") from err
    for statement in statements:
        if statement.type not in READ_ONLY_STATEMENTS:
            kind = statement.type.name.replace("_", " ")
            raise InvalidInput(
                f"the catalog is read-only: only SELECT (SHOW, DESCRIBE, SUMMARIZE) and EXPLAIN "
                f"queries run, not {kind}"
            )


def local_part_paths(store: Store, table: str) -> list[str]:
    """Filesystem paths of the table's parts: the store's own files, or fresh cached copies."""
    parts = list_parts(store, table)
    if not parts:
        return []
    if store.is_local:
        return [store.filesystem_path(p.key) for p in parts]
    cache = cache_folder(store) / table
    cache.mkdir(parents=True, exist_ok=True)
    wanted = {_cache_name(p): p for p in parts}
    for stale in set(os.listdir(cache)) - set(wanted):
        (cache / stale).unlink(missing_ok=True)
    for name, part in wanted.items():
        target = cache / name
        if not target.exists():
            temp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temp.write_bytes(store.read_bytes(part.key))
            temp.replace(target)
    return [str(cache / name) for name in sorted(wanted)]


def cache_folder(store: Store) -> Path:
    """Where catalog parts of a remote store are cached (``MIRA_CACHE_DIR``, else ~/.cache)."""
    root = store.cache_dir or Path.home() / ".cache" / "mira"
    return root / "catalog" / hashlib.sha256(store.url.encode()).hexdigest()[:16]


def _cache_name(part: ObjectInfo) -> str:
    tag = hashlib.sha256(f"{part.etag}:{part.size}".encode()).hexdigest()[:16]
    return f"{part.key.rsplit('/', 1)[-1].removesuffix('.parquet')}.{tag}.parquet"


def query_catalog(store: Store, sql: str) -> pa.Table:
    """Run the query ``sql`` (DuckDB dialect) over the catalog tables; returns an Arrow table.

    Statements other than queries are refused, and the connection can touch no file.
    """
    check_read_only(sql)
    used = [t for t in TABLES if re.search(rf"\b{t}\b", sql)]
    connection = connect_catalog(store, used or TABLES)  # SHOW TABLES names none: all of them
    try:
        relation = connection.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as err:
        raise InvalidInput(f"catalog query failed: {err}") from err
    finally:
        connection.close()


def excluded_keys(store: Store) -> set[str]:
    """Keys that must stay out of splits and snapshots.

    An item is excluded while its latest review row is pending or rejected, and every item of
    a batch is excluded while a batch-level ``fail`` expectation of that batch did not pass.
    """
    excluded: set[str] = set()
    review = read_table(store, "review")
    if review.num_rows:
        latest: dict[str, tuple[str, str]] = {}
        for row in review.select(["key", "status", "updated_at"]).to_pylist():
            seen = latest.get(row["key"])
            if seen is None or row["updated_at"] >= seen[0]:
                latest[row["key"]] = (row["updated_at"], row["status"])
        excluded |= {key for key, (_, status) in latest.items() if status != "accepted"}
    quality = read_table(store, "quality")
    if quality.num_rows:
        failed_batches = {
            row["batch"]
            for row in quality.to_pylist()
            if row["key"] == "" and row["severity"] == "fail" and not row["passed"]
        }
        for table in ("instances", "slides"):
            items = read_table(store, table)
            if items.num_rows:
                excluded |= {
                    row["key"]
                    for row in items.select(["batch", "key"]).to_pylist()
                    if row["batch"] in failed_batches
                }
    return excluded


SERIES_SQL = """
SELECT batch, patient_id, study_uid, series_uid, any_value(modality) AS modality,
       any_value(body_part) AS body_part, any_value(manufacturer) AS manufacturer,
       any_value(model) AS model, count(*) AS instances, sum(bytes) AS bytes,
       min(rows) AS rows, min(columns) AS columns, sum(frames) AS frames,
       any_value(slice_thickness) AS slice_thickness,
       CASE WHEN count(slice_position) > 1
            THEN (max(slice_position) - min(slice_position)) / (count(slice_position) - 1)
       END AS mean_slice_spacing,
       any_value(deid_profile) AS deid_profile, any_value(mira_version) AS mira_version
FROM items GROUP BY batch, patient_id, study_uid, series_uid ORDER BY series_uid
"""
STUDIES_SQL = """
SELECT batch, patient_id, study_uid, any_value(study_date) AS study_date,
       string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities,
       count(DISTINCT series_uid) AS series, count(*) AS instances, sum(bytes) AS bytes
FROM items GROUP BY batch, patient_id, study_uid ORDER BY study_uid
"""


def summarise_instances(instances: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The ``series`` and ``studies`` rows of a batch, derived from its ``instances`` rows."""
    connection = duckdb.connect()
    try:
        connection.register("items", instances)
        return connection.sql(SERIES_SQL).to_arrow_table(), connection.sql(
            STUDIES_SQL
        ).to_arrow_table()
    finally:
        connection.close()

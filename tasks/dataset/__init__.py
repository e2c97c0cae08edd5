"""Datasets: the catalog tables, patient-disjoint splits and immutable snapshots.

The public face of the wing; ``catalog`` reads and writes the Parquet parts, ``split`` assigns
splits, ``snapshot`` creates and exports, ``manifest`` is the snapshot format, ``reader`` loads
and iterates snapshots and ``verify`` checks and diffs them.
"""

from tasks.dataset.catalog import (
    INSTANCE_SCHEMA,
    QUALITY_SCHEMA,
    REVIEW_SCHEMA,
    SLIDE_SCHEMA,
    TABLES,
    CatalogTable,
    catalog_tables,
    connect_catalog,
    delete_part,
    excluded_keys,
    has_catalog,
    list_parts,
    part_key,
    query_catalog,
    read_part,
    read_table,
    summarise_instances,
    write_part,
)
from tasks.dataset.manifest import entries, prove, verify_proof
from tasks.dataset.reader import list_snapshots, load_card, load_manifest
from tasks.dataset.snapshot import (
    DEFAULT_RETENTION_DAYS,
    LockPolicy,
    SnapshotResult,
    create_snapshot,
    export_snapshot,
)
from tasks.dataset.split import SplitRatios, SplitResult, batch_split_sizes, split_dataset
from tasks.dataset.verify import DEFAULT_WORKERS, VerifyReport, diff_snapshots, verify_snapshot

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_WORKERS",
    "INSTANCE_SCHEMA",
    "QUALITY_SCHEMA",
    "REVIEW_SCHEMA",
    "SLIDE_SCHEMA",
    "TABLES",
    "CatalogTable",
    "LockPolicy",
    "SnapshotResult",
    "SplitRatios",
    "SplitResult",
    "VerifyReport",
    "batch_split_sizes",
    "catalog_tables",
    "connect_catalog",
    "create_snapshot",
    "delete_part",
    "diff_snapshots",
    "entries",
    "excluded_keys",
    "export_snapshot",
    "has_catalog",
    "list_parts",
    "list_snapshots",
    "load_card",
    "load_manifest",
    "part_key",
    "prove",
    "query_catalog",
    "read_part",
    "read_table",
    "split_dataset",
    "summarise_instances",
    "verify_proof",
    "verify_snapshot",
    "write_part",
]

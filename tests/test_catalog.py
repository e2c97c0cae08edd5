"""The catalog: per-batch Parquet parts in the store, one table to the reader, SQL through DuckDB."""

from __future__ import annotations

import pytest

from mira.errors import InvalidInput
from storage import Store
from tasks.dataset import catalog


def rows(batch: str, count: int) -> list[dict[str, object]]:
    return [
        {
            "batch": batch,
            "key": f"dicom/p{i % 3}/s/{batch}-{i}.dcm",
            "modality": "CT" if i % 2 else "MR",
            "bytes": i,
        }
        for i in range(count)
    ]


def test_parts_union_and_query(store: Store) -> None:
    catalog.write_part(store, "instances", "batch-1", rows("batch-1", 10))
    catalog.write_part(store, "instances", "batch-2", rows("batch-2", 5))
    table = catalog.read_table(store, "instances")
    assert table.num_rows == 15
    result = catalog.query_catalog(
        store, "SELECT modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1"
    )
    assert result.to_pylist() == [{"modality": "CT", "n": 7}, {"modality": "MR", "n": 8}]


def test_rewriting_a_part_is_idempotent(store: Store) -> None:
    catalog.write_part(store, "instances", "batch-1", rows("batch-1", 4))
    catalog.write_part(store, "instances", "batch-1", rows("batch-1", 4))
    assert catalog.read_table(store, "instances").num_rows == 4
    assert [p.key for p in catalog.list_parts(store, "instances")] == [
        "catalog/instances/batch-1.parquet"
    ]


def test_empty_table_and_bad_names(store: Store) -> None:
    assert catalog.read_table(store, "slides").num_rows == 0
    assert catalog.read_part(store, "slides", "nope") is None
    with pytest.raises(InvalidInput, match="unknown catalog table"):
        catalog.write_part(store, "secrets", "x", rows("x", 1))
    with pytest.raises(InvalidInput, match="part name"):
        catalog.part_key("instances", "../escape")
    with pytest.raises(InvalidInput, match="query failed"):
        catalog.query_catalog(store, "SELECT * FROM instances")  # no part yet: no such table


def test_excluded_keys_follow_review_and_batch_gate(local_store: Store) -> None:
    catalog.write_part(local_store, "instances", "b1", rows("b1", 3))
    catalog.write_part(local_store, "instances", "b2", rows("b2", 2))
    keys_b1 = [r["key"] for r in rows("b1", 3)]
    review = [
        {
            "key": keys_b1[0],
            "batch": "b1",
            "status": "pending",
            "updated_at": "2026-01-01T00:00:00Z",
        },
        {
            "key": keys_b1[1],
            "batch": "b1",
            "status": "pending",
            "updated_at": "2026-01-01T00:00:00Z",
        },
        {
            "key": keys_b1[1],
            "batch": "b1",
            "status": "accepted",
            "updated_at": "2026-01-02T00:00:00Z",
        },
    ]
    catalog.write_part(local_store, "review", "b1", review)
    quality = [
        {"batch": "b2", "key": "", "check": "uids-unique", "severity": "fail", "passed": False},
        {"batch": "b1", "key": "", "check": "uids-unique", "severity": "fail", "passed": True},
        {"batch": "b1", "key": "", "check": "style", "severity": "warn", "passed": False},
    ]
    catalog.write_part(local_store, "quality", "b1", quality)
    excluded = catalog.excluded_keys(local_store)
    assert excluded == {keys_b1[0]} | {r["key"] for r in rows("b2", 2)}

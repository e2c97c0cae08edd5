"""The catalog: per-batch Parquet parts in the store, one table to the reader, SQL through DuckDB."""

from __future__ import annotations

import pytest

from mira.errors import InvalidInput
from storage import Store
from tasks import catalog


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
    result = catalog.query(
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
        catalog.query(store, "SELECT * FROM instances")  # no part yet: no such table

"""What replication may copy: the published batches of the local research store, from the catalog.

A batch is published once its ``instances`` part exists (the de-identification stage writes it
last). Its replicable objects are exactly the keys its ``instances`` and ``slides`` parts list,
each with the SHA-256 the catalog recorded, then the batch's own catalog parts, ``instances``
last. Nothing else in the store (a stray object, the replication records) and nothing of the
gateway is ever a source.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pyarrow.parquet as pq

from mira.errors import ObjectNotFound
from storage import Store
from tasks import layout
from tasks.dataset import part_key

DATA_TABLES = ("instances", "slides")  # the parts that list data objects with their SHA-256
# The batch's catalog parts in the order they are sent: instances last, the commit a reader
# of the remote catalog looks for (as on the local store).
CATALOG_ORDER = ("series", "studies", "slides", "batches", "instances")
DATA_PREFIXES = (f"{layout.DICOM}/", f"{layout.SLIDES}/")


@dataclass(frozen=True)
class PlannedObject:
    """One object to replicate: its key, size and the SHA-256 its bytes must have."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CatalogPartCopy:
    """One catalog part of the batch, as read once from the local store (sent as read)."""

    key: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class BatchPlan:
    """A published batch: data objects first, then its catalog parts (instances last)."""

    batch: str
    published_at: str
    objects: tuple[PlannedObject, ...]
    catalog: tuple[CatalogPartCopy, ...]
    refused: tuple[str, ...] = ()  # keys the catalog lists outside the research data folders

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects) + sum(len(p.data) for p in self.catalog)


@dataclass(frozen=True)
class PublishedBatch:
    """A batch's name and publish time (from its ``batches`` row)."""

    batch: str
    published_at: str


def published_batches(local: Store) -> list[PublishedBatch]:
    """Every published batch of ``local``, oldest publish first (then by name)."""
    committed = _part_names(local, "instances")
    found = []
    for batch in sorted(_part_names(local, "batches") & committed):
        rows = _read_rows(local, part_key("batches", batch))
        published_at = str(rows[0].get("published_at") or "") if rows else ""
        found.append(PublishedBatch(batch, published_at))
    return sorted(found, key=lambda b: (b.published_at, b.batch))


def plan_batch(local: Store, batch: PublishedBatch) -> BatchPlan:
    """The objects of one published batch, as its catalog lists them."""
    objects: dict[str, PlannedObject] = {}
    refused: list[str] = []
    parts: list[CatalogPartCopy] = []
    for table in CATALOG_ORDER:
        key = part_key(table, batch.batch)
        try:
            data = local.read_bytes(key)
        except ObjectNotFound:
            continue
        parts.append(CatalogPartCopy(key, data))
        if table not in DATA_TABLES:
            continue
        for row in pq.read_table(io.BytesIO(data), columns=["key", "bytes", "sha256"]).to_pylist():
            if not str(row["key"]).startswith(DATA_PREFIXES) or ".." in str(row["key"]):
                refused.append(str(row["key"]))
                continue
            objects[row["key"]] = PlannedObject(row["key"], int(row["bytes"]), str(row["sha256"]))
    return BatchPlan(
        batch=batch.batch,
        published_at=batch.published_at,
        objects=tuple(objects[k] for k in sorted(objects)),
        catalog=tuple(parts),
        refused=tuple(refused),
    )


def _part_names(local: Store, table: str) -> set[str]:
    prefix = f"{layout.CATALOG}/{table}/"
    return {
        info.key[len(prefix) :].removesuffix(".parquet")
        for info in local.list(prefix)
        if info.key.endswith(".parquet") and "/" not in info.key[len(prefix) :]
    }


def _read_rows(local: Store, key: str) -> list[dict[str, object]]:
    return pq.read_table(io.BytesIO(local.read_bytes(key))).to_pylist()

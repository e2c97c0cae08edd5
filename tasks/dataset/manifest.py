"""The snapshot format: the manifest's schema and rows, its keys, the top hash and Merkle proofs.

A snapshot is ``snapshots/<name>/manifest.parquet`` (one row per object, sorted by key) and
``snapshots/<name>/card.json`` (counts, provenance and the top hash).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, fields

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mira.errors import InvalidInput
from tasks import layout
from tasks.dataset import merkle

BATCH_ROWS = 10_000  # manifest rows turned into Python objects at a time


MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("version_id", pa.string()),  # null where the store keeps no versions
        ("kind", pa.string()),  # instance | slide | pyramid
        ("patient_id", pa.string()),  # the split unit; "slide:<id>" for a slide without one
        ("split", pa.string()),
        ("modality", pa.string()),
        ("qa_status", pa.string()),  # passed | warned | failed | accepted | unchecked
        ("batch", pa.string()),  # lineage: the ingest batch
        ("mira_version", pa.string()),  # lineage: the mira that wrote the object
    ]
)


LEAF_COLUMNS = tuple(MANIFEST_SCHEMA.names)


@dataclass(frozen=True)
class SnapshotEntry:
    """One manifest row: an object of the dataset, pinned by version and SHA-256."""

    key: str
    size: int
    sha256: str
    version_id: str | None
    kind: str
    patient_id: str
    split: str
    modality: str | None
    qa_status: str
    batch: str | None
    mira_version: str | None

    def encoded(self) -> bytes:
        """The bytes its Merkle leaf hash covers (see ``merkle.encode_entries``)."""
        values = ["" if v is None else str(v) for v in (getattr(self, n) for n in LEAF_COLUMNS)]
        return (merkle.FIELD_SEPARATOR + merkle.FIELD_SEPARATOR.join(values)).encode()


def manifest_key(name: str) -> str:
    return f"{layout.snapshot_folder(name)}/manifest.parquet"


def card_key(name: str) -> str:
    return f"{layout.snapshot_folder(name)}/card.json"


def export_prefix(name: str) -> str:
    return f"{layout.snapshot_folder(name)}/export"


def manifest_bytes(manifest: pa.Table) -> bytes:
    """The manifest as Parquet (zstd); the top hash covers rows, not these bytes."""
    buffer = io.BytesIO()
    pq.write_table(manifest.cast(MANIFEST_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def top_hash(manifest: pa.Table) -> str:
    """The Merkle root over the manifest's rows in order."""
    return merkle.merkle_root(merkle.leaf_hashes(manifest, LEAF_COLUMNS))


def entries(manifest: pa.Table) -> Iterator[SnapshotEntry]:
    """The manifest's rows as entries."""
    names = [f.name for f in fields(SnapshotEntry)]
    for batch in manifest.select(names).to_batches(max_chunksize=BATCH_ROWS):
        for row in batch.to_pylist():
            yield SnapshotEntry(**row)


def prove(manifest: pa.Table, entry: SnapshotEntry) -> merkle.MerkleProof:
    """An inclusion proof of ``entry`` in the manifest: a few dozen hashes, not the manifest."""
    index = pc.index(manifest.column("key"), entry.key).as_py()
    if index < 0:
        raise InvalidInput(f"{entry.key} is not in this manifest")
    levels = merkle.tree_levels(merkle.leaf_hashes(manifest, LEAF_COLUMNS))
    return merkle.proof_for(levels, index)


def verify_proof(root: str, entry: SnapshotEntry, proof: merkle.MerkleProof) -> bool:
    """Whether ``entry``, exactly as given, is row ``proof.index`` of the snapshot with ``root``."""
    return merkle.verify_path(root, merkle.leaf_hash(entry.encoded()), proof)

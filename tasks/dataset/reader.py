"""Reading snapshots: the card, the manifest checked against its top hash, and every object checked.

Every read here checks the manifest against the card's top hash before trusting a single row,
and ``iter_split`` checks each object's SHA-256 as it reads it. Where the store keeps versions,
the card and manifest are read at the snapshot's own first versions (``versions``), so what a
plain PUT or DELETE puts over them is never read. Writing is ``snapshot``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mira.errors import IntegrityError, InvalidInput, ObjectNotFound
from storage import Store
from tasks import layout
from tasks.dataset.manifest import SnapshotEntry, entries, manifest_key, top_hash
from tasks.dataset.versions import locate_snapshot, read_card


@dataclass(frozen=True)
class SnapshotSummary:
    """One line of ``mira snapshot list``."""

    name: str
    created_at: str
    entries: int
    bytes: int
    top_hash: str
    enforcement: str
    complete: bool
    tampered: bool = False  # versions or delete markers over its own: see `mira snapshot verify`


def load_card(store: Store, name: str) -> dict[str, Any]:
    """The dataset card of snapshot ``name``: its first (locked) version where the store keeps
    versions, whatever was put over it; ``IntegrityError`` if it disagrees with its index."""
    card, problems = read_card(store, locate_snapshot(store, name))
    if problems:
        raise IntegrityError(
            f"snapshot {name!r}: {problems[0]}: run `mira snapshot verify` for details"
        )
    return card


def read_manifest(store: Store, name: str, version_id: str | None = None) -> tuple[bytes, pa.Table]:
    """The manifest's bytes and rows, unchecked (``load_manifest`` checks them)."""
    data = store.read_bytes(manifest_key(name), version_id)
    return data, pq.read_table(io.BytesIO(data))


def load_manifest(store: Store, name: str, card: Mapping[str, Any] | None = None) -> pa.Table:
    """The manifest, read at the version the card recorded and checked against its top hash."""
    card = card or load_card(store, name)
    recorded = card["manifest"]
    data, manifest = read_manifest(store, name, recorded.get("version_id"))
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded["sha256"] or top_hash(manifest) != card["top_hash"]:
        raise IntegrityError(
            f"the manifest of snapshot {name!r} does not match the top hash in its card: "
            "run `mira snapshot verify` for details"
        )
    return manifest


def list_snapshots(store: Store) -> list[SnapshotSummary]:
    """Every snapshot in the store, by name, read as ``load_card`` reads it (a delete marker
    over its card does not hide it); one without a card is incomplete."""
    summaries = []
    for name in snapshot_names(store):
        try:
            located = locate_snapshot(store, name)
            card, problems = read_card(store, located)
        except ObjectNotFound:
            summaries.append(SnapshotSummary(name, "", 0, 0, "", "", complete=False))
            continue
        summaries.append(
            SnapshotSummary(
                name=name,
                created_at=card["created_at"],
                entries=card["manifest"]["entries"],
                bytes=card["manifest"]["object_bytes"],
                top_hash=card["top_hash"],
                enforcement=card["retention"]["enforcement"],
                complete=True,
                tampered=bool(problems or located.overwrites),
            )
        )
    return summaries


def snapshot_names(store: Store) -> list[str]:
    """The names of the snapshots with any object or version in the store, or an index entry."""
    names = set()
    index_folder = layout.SNAPSHOT_INDEX + "/"
    for version in store.list_versions(f"{layout.SNAPSHOTS}/"):
        if version.key.startswith(index_folder):
            names.add(version.key.removeprefix(index_folder).removesuffix(".json"))
        elif version.key.count("/") >= 2:
            names.add(version.key.split("/")[1])
    return sorted(names)


def read_checked(store: Store, entry: SnapshotEntry) -> bytes:
    """The object's bytes at the recorded version; ``IntegrityError`` naming it on a mismatch."""
    data = store.read_bytes(entry.key, entry.version_id)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256 or len(data) != entry.size:
        raise IntegrityError(
            f"{store.url_of(entry.key)} changed: SHA-256 {digest}, the snapshot has {entry.sha256}"
        )
    return data


def iter_split(store: Store, name: str, split: str) -> Iterator[tuple[SnapshotEntry, bytes]]:
    """Each object of one split of snapshot ``name`` with its bytes, every hash checked."""
    manifest = load_manifest(store, name)
    if split not in set(manifest.column("split").to_pylist()):
        raise InvalidInput(f"snapshot {name!r} has no split {split!r}")
    for entry in entries(manifest.filter(pc.equal(manifest["split"], split))):
        yield entry, read_checked(store, entry)


def iter_export(store: Store, lines: Iterable[str]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each object an exported ``<split>.jsonl`` lists, with its bytes, every hash checked."""
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        data = store.read_bytes(record["key"], record["version_id"])
        digest = hashlib.sha256(data).hexdigest()
        if digest != record["sha256"]:
            raise IntegrityError(
                f"{record['url']} changed: SHA-256 {digest}, the export has {record['sha256']}"
            )
        yield record, data

"""Snapshots on the real S3 server: Object Lock (WORM) on versions, and tamper detection."""

from __future__ import annotations

import pytest

from mira.errors import AlreadyExists, IntegrityError, ObjectLocked
from storage import Store
from tasks.dataset.manifest import entries
from tasks.dataset.reader import iter_split, load_card, load_manifest
from tasks.dataset.snapshot import LockPolicy, create_snapshot, export_snapshot
from tasks.dataset.verify import verify_snapshot
from tests.test_snapshot import dataset

pytestmark = pytest.mark.s3
# COMPLIANCE cannot be lifted by anyone, which is what the tests must show; one day on a
# throwaway server.
LOCK = LockPolicy(mode="COMPLIANCE", days=1)


def test_object_lock_protects_manifest_card_and_data_versions(s3_lock_store: Store) -> None:
    store = dataset(s3_lock_store, patients=4)
    result = create_snapshot(store, "v1", lock=LOCK)
    assert result.enforcement == "s3-object-lock" and result.locked_objects == result.entries
    card = load_card(store, "v1")
    assert card["retention"]["mode"] == "COMPLIANCE" and card["manifest"]["version_id"]
    manifest = load_manifest(store, "v1")
    pinned = list(entries(manifest))
    assert all(e.version_id for e in pinned)
    retention = store.get_retention(pinned[0].key, pinned[0].version_id)
    assert retention is not None and retention.mode == "COMPLIANCE"

    with pytest.raises(ObjectLocked):
        store.delete(pinned[0].key, version_id=pinned[0].version_id)
    with pytest.raises(ObjectLocked):
        store.delete("snapshots/v1/manifest.parquet", version_id=card["manifest"]["version_id"])
    card_version = store.info("snapshots/v1/card.json").version_id
    with pytest.raises(ObjectLocked):
        store.delete("snapshots/v1/card.json", version_id=card_version)
    with pytest.raises(AlreadyExists):
        create_snapshot(store, "v1", lock=LOCK)
    assert verify_snapshot(store, "v1").ok


def test_overwriting_keys_cannot_touch_the_locked_versions(s3_lock_store: Store) -> None:
    store = dataset(s3_lock_store, patients=4)
    create_snapshot(store, "v1", lock=LOCK)
    victim = next(iter(entries(load_manifest(store, "v1"))))
    original = store.read_bytes(victim.key, victim.version_id)
    # A plain PUT makes a new current version; the snapshot's version stays as it was.
    store.write_bytes(victim.key, b"overwritten")
    store.write_bytes("snapshots/v1/manifest.parquet", b"forged manifest")
    assert store.read_bytes(victim.key, victim.version_id) == original
    report = verify_snapshot(store, "v1")
    assert not report.problems  # every object read at its pinned, locked version
    assert [o.key for o in report.overwrites] == ["snapshots/v1/manifest.parquet"]
    assert not report.ok and not report.manifest_problems  # the locked manifest still verifies
    data = dict((e.key, d) for e, d in iter_split(store, "v1", victim.split))
    assert data[victim.key] == original


def test_plain_bucket_detects_tampering(s3_store: Store) -> None:
    store = dataset(s3_store, patients=4)
    result = create_snapshot(store, "v1", lock=LOCK)
    assert result.enforcement == "none" and result.locked_objects == 0
    assert "no Object Lock" in result.note
    victim = next(e for e in entries(load_manifest(store, "v1")) if e.kind == "instance")
    store.write_bytes(victim.key, b"tampered")
    extra = victim.key.rsplit("/", 1)[0] + "/extra.dcm"
    store.write_bytes(extra, b"new")
    report = verify_snapshot(store, "v1")
    assert [(p.key, p.problem) for p in report.problems] == sorted(
        [(victim.key, "changed"), (extra, "appeared")]
    )
    export_snapshot(store, "v1")
    with pytest.raises(IntegrityError, match=victim.key):
        list(iter_split(store, "v1", victim.split))

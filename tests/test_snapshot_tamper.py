"""Forging a snapshot with plain PUTs and DELETEs on an Object Lock bucket (the real S3 server).

Object Lock keeps the snapshot's versions, but anyone who may write can put new versions and
delete markers over them. The snapshot is its own first versions: verify reads those, reports
whatever lies over them as tampering, and readers never read the forgery.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from mira.cli import snapshot as cli_snapshot
from mira.cli.root import common
from mira.errors import AlreadyExists, IntegrityError, ObjectLocked
from storage import Store, open_store
from tasks.dataset.manifest import (
    MANIFEST_SCHEMA,
    card_key,
    entries,
    manifest_bytes,
    manifest_key,
    top_hash,
)
from tasks.dataset.reader import iter_split, list_snapshots, load_card, load_manifest
from tasks.dataset.snapshot import LockPolicy, create_snapshot, export_snapshot
from tasks.dataset.verify import diff_snapshots, verify_snapshot
from tests.seaweedfs import SeaweedServer
from tests.test_snapshot import dataset

LOCK = LockPolicy(mode="COMPLIANCE", days=1)
CARD, MANIFEST = card_key("v1"), manifest_key("v1")
INDEX = "snapshots/_index/v1.json"  # the locked index entry of snapshot v1

app = typer.Typer()
app.callback()(common)
cli_snapshot.register(app)
runner = CliRunner()


def forge(store: Store, victim_key: str, other: bytes) -> str:
    """The two-PUT forgery: a manifest whose row for ``victim_key`` names other bytes (a new,
    unlocked version of that object), and a card carrying the forged manifest's top hash."""
    other_version = store.write_bytes(victim_key, other).version_id
    rows = load_manifest(store, "v1").to_pylist()
    for row in rows:
        if row["key"] == victim_key:
            digest = hashlib.sha256(other).hexdigest()
            row |= {"sha256": digest, "size": len(other), "version_id": other_version}
    forged = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    data = manifest_bytes(forged)
    manifest_version = store.write_bytes(MANIFEST, data).version_id  # PUT 1
    card = load_card(store, "v1")
    card["top_hash"] = top_hash(forged)
    card["manifest"] |= {"sha256": hashlib.sha256(data).hexdigest(), "version_id": manifest_version}
    store.write_bytes(CARD, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())  # PUT 2
    return str(card["top_hash"])


def cli_verify(
    server: SeaweedServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """``mira snapshot verify v1`` against the S3 store: exit code and output."""
    config = server.config
    monkeypatch.setenv("MIRA_S3_ACCESS_KEY_ID", str(config.access_key_id))
    monkeypatch.setenv("MIRA_S3_SECRET_ACCESS_KEY", str(config.secret_access_key))
    monkeypatch.setenv("MIRA_S3_REGION", str(config.region))
    base = ["--research", store.url, "--s3-endpoint", str(config.endpoint_url)]
    result = runner.invoke(app, [*base, "snapshot", "verify", "v1"])
    return result.exit_code, result.output + str(result.exception or "")


@pytest.mark.s3
def test_two_put_forgery_is_reported_and_the_locked_snapshot_still_verifies(
    s3_server: SeaweedServer, s3_lock_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = dataset(s3_lock_store, patients=4)
    genuine = create_snapshot(store, "v1", lock=LOCK)
    victim = next(e for e in entries(load_manifest(store, "v1")) if e.kind == "instance")
    original = store.read_bytes(victim.key, victim.version_id)
    forged_hash = forge(store, victim.key, b"another patient's bytes")
    assert forged_hash != genuine.top_hash

    report = verify_snapshot(store, "v1")
    assert not report.ok
    assert {o.key for o in report.overwrites} == {CARD, MANIFEST}
    assert all(not o.delete_marker and o.latest for o in report.overwrites)
    # The locked snapshot still verifies: its own top hash, every object at its pinned version.
    assert report.top_hash == genuine.top_hash
    assert report.problems == () and report.manifest_problems == ()
    assert report.checked == genuine.entries and report.limits == ""
    assert "TAMPERING" in report.summary() and CARD in report.summary()

    code, output = cli_verify(s3_server, store, monkeypatch)
    assert code != 0 and "tampering" in output and CARD in output and MANIFEST in output
    assert forged_hash not in output

    # Readers, list and diff read the locked versions, never the forgery.
    assert load_card(store, "v1")["top_hash"] == genuine.top_hash
    read = dict((e.key, d) for e, d in iter_split(store, "v1", victim.split))
    assert read[victim.key] == original
    (summary,) = list_snapshots(store)
    assert summary.top_hash == genuine.top_hash and summary.tampered
    assert diff_snapshots(store, "v1", "v1").identical


@pytest.mark.s3
def test_a_delete_marker_on_the_card_is_tampering_not_a_missing_snapshot(
    s3_server: SeaweedServer, s3_lock_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = dataset(s3_lock_store, patients=4)
    genuine = create_snapshot(store, "v1", lock=LOCK)
    card_version = store.info(CARD).version_id
    store.delete(CARD)  # a plain DELETE: a delete marker, which Object Lock allows
    assert not store.exists(CARD)

    report = verify_snapshot(store, "v1")
    assert not report.ok and report.top_hash == genuine.top_hash
    (overwrite,) = report.overwrites
    assert overwrite.key == CARD and overwrite.delete_marker and overwrite.latest
    assert overwrite.snapshot_version == card_version
    assert "delete marker" in overwrite.describe()
    assert report.problems == () and report.manifest_problems == ()
    code, output = cli_verify(s3_server, store, monkeypatch)
    assert code != 0 and "delete marker" in output and "no snapshot" not in output

    manifest = load_manifest(store, "v1")
    for part in set(manifest.column("split").to_pylist()):
        for entry, data in iter_split(store, "v1", part):
            assert hashlib.sha256(data).hexdigest() == entry.sha256
    (summary,) = list_snapshots(store)
    assert summary.complete and summary.tampered and summary.top_hash == genuine.top_hash
    assert export_snapshot(store, "v1").counts
    # The name stays taken: an exclusive create over a delete marker would succeed on S3.
    with pytest.raises(AlreadyExists, match="hidden by delete markers"):
        create_snapshot(store, "v1", lock=LOCK)


@pytest.mark.s3
def test_a_genuine_snapshot_verifies_green_with_its_locked_versions_indexed(
    s3_server: SeaweedServer, s3_lock_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = dataset(s3_lock_store, patients=4)
    genuine = create_snapshot(store, "v1", lock=LOCK)
    index = json.loads(store.read_bytes(INDEX))
    card_info, manifest_info = store.info(CARD), store.info(MANIFEST)
    assert index["top_hash"] == genuine.top_hash
    assert index["card"]["version_id"] == card_info.version_id
    assert index["card"]["sha256"] == hashlib.sha256(store.read_bytes(CARD)).hexdigest()
    assert index["manifest"]["version_id"] == manifest_info.version_id

    report = verify_snapshot(store, "v1")
    assert report.ok and report.overwrites == () and report.limits == ""
    code, output = cli_verify(s3_server, store, monkeypatch)
    assert code == 0 and genuine.top_hash in output and "tampering" not in output
    (summary,) = list_snapshots(store)
    assert summary.name == "v1" and summary.complete and not summary.tampered


@pytest.mark.s3
def test_the_index_entry_cannot_be_replaced(s3_lock_store: Store) -> None:
    store = dataset(s3_lock_store, patients=4)
    genuine = create_snapshot(store, "v1", lock=LOCK)
    first = store.info(INDEX).version_id
    with pytest.raises(AlreadyExists):
        store.write_bytes(INDEX, b'{"top_hash": "forged"}', exclusive=True)
    with pytest.raises(ObjectLocked):
        store.delete(INDEX, version_id=first)
    retention = store.get_retention(INDEX, first)
    assert retention is not None and retention.mode == "COMPLIANCE"
    # A plain PUT over it is one more version: reported, and the first one is still read.
    store.write_bytes(INDEX, b'{"top_hash": "forged"}')
    report = verify_snapshot(store, "v1")
    assert [o.key for o in report.overwrites] == [INDEX] and report.manifest_problems == ()
    assert load_card(store, "v1")["top_hash"] == genuine.top_hash


def test_a_local_snapshot_says_what_verify_cannot_see(tmp_path: Path) -> None:
    store = dataset(open_store(tmp_path / "research"), patients=4)
    create_snapshot(store, "v1", lock=LockPolicy(mode="GOVERNANCE", days=1))
    report = verify_snapshot(store, "v1")
    assert report.ok and "keeps no versions" in report.limits and "--top-hash" in report.limits
    assert verify_snapshot(store, "v1", expected_top_hash=report.top_hash).limits == ""
    with pytest.raises(AlreadyExists):
        store.write_bytes(INDEX, b"{}", exclusive=True)
    # Files have no versions: a forger with filesystem rights replaces manifest and card. The
    # index still names the card's SHA-256 (the forger must replace that too to go unseen).
    for key in (CARD, MANIFEST, "dicom/P001/1.2.1/1.2.1.1/0.dcm"):
        (tmp_path / "research" / key).chmod(0o644)
    forge(store, "dicom/P001/1.2.1/1.2.1.1/0.dcm", b"other")
    forged = verify_snapshot(store, "v1")
    assert not forged.ok and any("index" in p for p in forged.manifest_problems)
    with pytest.raises(IntegrityError, match="index"):
        load_card(store, "v1")
    (tmp_path / "research" / INDEX).chmod(0o644)
    (tmp_path / "research" / INDEX).write_text('{"top_hash": "forged"}')
    assert "not one mira wrote" in " ".join(verify_snapshot(store, "v1").manifest_problems)


@pytest.mark.s3
def test_versions_are_listed_oldest_first_with_their_delete_markers(s3_lock_store: Store) -> None:
    # Several writes within one second: the order comes from S3's listing, not LastModified.
    first = s3_lock_store.write_bytes("k/card.json", b"1", exclusive=True).version_id
    second = s3_lock_store.write_bytes("k/card.json", b"22").version_id
    s3_lock_store.delete("k/card.json")
    s3_lock_store.write_bytes("k/card.json.bak", b"other key")
    listed = [v for v in s3_lock_store.list_versions("k/card.json") if v.key == "k/card.json"]
    assert [(v.version_id, v.size, v.delete_marker) for v in listed[:2]] == [
        (first, 1, False),
        (second, 2, False),
    ]
    assert [(v.delete_marker, v.latest) for v in listed] == [
        (False, False),
        (False, False),
        (True, True),
    ]
    keys = [v.key for v in s3_lock_store.list_versions()]
    assert keys == ["k/card.json"] * 3 + ["k/card.json.bak"]

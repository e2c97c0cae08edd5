"""Snapshots on a local store: manifest, top hash, proofs, tamper detection, diff, export, reader."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mira.cli import snapshot as cli_snapshot
from mira.cli.root import common
from mira.errors import AlreadyExists, IntegrityError, InvalidInput, ObjectLocked
from storage import Store, open_store
from tasks.dataset import catalog, merkle
from tasks.dataset.manifest import (
    LEAF_COLUMNS,
    MANIFEST_SCHEMA,
    entries,
    prove,
    top_hash,
    verify_proof,
)
from tasks.dataset.reader import iter_export, iter_split, list_snapshots, load_card, load_manifest
from tasks.dataset.snapshot import LockPolicy, create_snapshot, export_snapshot
from tasks.dataset.split import patient_splits, split_dataset
from tasks.dataset.verify import diff_manifests, diff_snapshots, verify_snapshot

app = typer.Typer()
app.callback()(common)
cli_snapshot.register(app)
runner = CliRunner()
LOCK = LockPolicy(mode="GOVERNANCE", days=1)


def add_batch(store: Store, batch: str, patients: range, slide: bool = True) -> list[str]:
    """A batch of de-identified objects and its catalog rows: 2 instances per patient, a slide.

    The last patient's second instance waits for review (it must stay out of snapshots); the
    slide gets a small pyramid.
    """
    rows = []
    for p in patients:
        for i in range(2):
            key = f"dicom/P{p:03d}/1.2.{p}/1.2.{p}.1/{i}.dcm"
            data = f"{batch}:{p}:{i}".encode() * 3
            store.write_bytes(key, data)
            rows.append(
                {
                    "batch": batch,
                    "key": key,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "patient_id": f"P{p:03d}",
                    "modality": "CT" if p % 2 else "MR",
                    "deid_profile": "PS3.15-basic",
                    "mira_version": "0.1.0",
                }
            )
    catalog.write_part(store, "instances", batch, rows)
    pending = str(rows[-1]["key"])
    catalog.write_part(
        store,
        "review",
        batch,
        [{"key": pending, "batch": batch, "status": "pending", "updated_at": "2026-01-01"}],
    )
    catalog.write_part(
        store,
        "quality",
        batch,
        [
            {"batch": batch, "key": "", "check": "uids", "severity": "fail", "passed": True},
            {
                "batch": batch,
                "key": rows[0]["key"],
                "check": "blur",
                "severity": "warn",
                "passed": False,
            },
        ],
    )
    if slide:
        tiff = b"II*\x00 slide " + batch.encode()
        store.write_bytes(f"slides/S-{batch}.tiff", tiff)
        store.write_bytes(f"pyramids/S-{batch}.ome.zarr/zarr.json", b"{}")
        store.write_bytes(f"pyramids/S-{batch}.ome.zarr/0/c/0/0", b"chunk")
        catalog.write_part(
            store,
            "slides",
            batch,
            [
                {
                    "batch": batch,
                    "key": f"slides/S-{batch}.tiff",
                    "bytes": len(tiff),
                    "sha256": hashlib.sha256(tiff).hexdigest(),
                    "slide_id": f"S-{batch}",
                    "patient_id": f"P{patients.start:03d}",
                    "deid_profile": "slide-label-removed",
                }
            ],
        )
    return [pending]


def dataset(store: Store, patients: int = 8) -> Store:
    add_batch(store, "b1", range(patients))
    split_dataset(store, seed=1)
    return store


def tamper(store: Store, key: str, data: bytes | None) -> None:
    """Change or remove an object behind mira's back (a read-only file is no obstacle to root)."""
    path = Path(store.filesystem_path(key))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)


def test_create_writes_sorted_manifest_card_and_locks(local_store: Store) -> None:
    dataset(local_store)
    result = create_snapshot(local_store, "v1", lock=LOCK)
    manifest = load_manifest(local_store, "v1")
    keys = manifest.column("key").to_pylist()
    assert keys == sorted(keys) and manifest.schema.names == MANIFEST_SCHEMA.names
    # Exactly the dataset: 16 instances - 1 pending review + slide + 2 pyramid objects.
    assert manifest.num_rows == result.entries == 16 - 1 + 1 + 2
    assert "dicom/P007/1.2.7/1.2.7.1/1.dcm" not in keys
    splits = patient_splits(local_store)
    for entry in entries(manifest):
        assert entry.split == splits[entry.patient_id]
        assert entry.sha256 == hashlib.sha256(local_store.read_bytes(entry.key)).hexdigest()
    rows = {e.key: e for e in entries(manifest)}
    assert rows["pyramids/S-b1.ome.zarr/0/c/0/0"].split == rows["slides/S-b1.tiff"].split
    assert rows["dicom/P000/1.2.0/1.2.0.1/0.dcm"].qa_status == "warned"
    assert rows["dicom/P001/1.2.1/1.2.1.1/0.dcm"].qa_status == "passed"
    assert rows["dicom/P001/1.2.1/1.2.1.1/0.dcm"].batch == "b1"

    card = load_card(local_store, "v1")
    assert card["top_hash"] == result.top_hash == top_hash(manifest)
    assert card["counts"]["items"] == 16 and card["counts"]["patients"] == 8
    assert card["counts"]["by_modality"]["SM"]["items"] == 1
    assert card["deid_profiles"] == {"PS3.15-basic": 15, "slide-label-removed": 1}
    assert card["quality"]["qa_status"] == {"passed": 15, "warned": 1}
    assert card["split"]["seed"] == 1
    assert card["retention"]["enforcement"] == "local-read-only"
    assert "WEAKER THAN WORM" in result.note
    # Local "lock": read-only files that mira refuses to delete or replace.
    for key in ("snapshots/v1/manifest.parquet", "snapshots/v1/card.json", keys[0]):
        with pytest.raises(ObjectLocked):
            local_store.delete(key)
        with pytest.raises(ObjectLocked):
            local_store.write_bytes(key, b"replacement")


def test_creating_an_existing_name_fails(local_store: Store) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    with pytest.raises(AlreadyExists):
        create_snapshot(local_store, "v1", lock=LOCK)
    with pytest.raises(InvalidInput):
        create_snapshot(local_store, "../escape", lock=LOCK)


def test_create_refuses_data_that_differs_from_the_catalog(local_store: Store) -> None:
    dataset(local_store)
    local_store.write_bytes("dicom/P002/1.2.2/1.2.2.1/0.dcm", b"not what the catalog says")
    with pytest.raises(IntegrityError, match=r"P002/1\.2\.2/1\.2\.2\.1/0\.dcm"):
        create_snapshot(local_store, "v1", lock=LOCK)
    assert not local_store.exists("snapshots/v1/manifest.parquet")


def test_create_needs_a_split_for_every_patient(local_store: Store) -> None:
    dataset(local_store)
    add_batch(local_store, "b2", range(8, 10), slide=False)
    with pytest.raises(InvalidInput, match="no split"):
        create_snapshot(local_store, "v1", lock=LOCK)


def test_verify_passes_on_an_untouched_snapshot(local_store: Store) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    steps: list[tuple[str, int, int]] = []
    report = verify_snapshot(local_store, "v1", progress=lambda *a: steps.append(a))
    assert report.ok, report.summary()
    assert report.checked == 18 and steps[-1] == ("verify objects", 18, 18)
    # Growth elsewhere (a new patient) is not a difference.
    add_batch(local_store, "b2", range(8, 10), slide=False)
    assert verify_snapshot(local_store, "v1").ok


@pytest.mark.parametrize(
    ("change", "problem"),
    [("flip", "changed"), ("remove", "missing"), ("add", "appeared")],
)
def test_verify_names_the_tampered_object(local_store: Store, change: str, problem: str) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    key = "dicom/P003/1.2.3/1.2.3.1/1.dcm"
    if change == "flip":
        data = bytearray(local_store.read_bytes(key))
        data[0] ^= 0x01
        tamper(local_store, key, bytes(data))
    elif change == "remove":
        tamper(local_store, key, None)
    else:
        key = "dicom/P003/1.2.3/1.2.3.1/injected.dcm"
        local_store.write_bytes(key, b"smuggled in")
    report = verify_snapshot(local_store, "v1")
    assert not report.ok
    assert [(p.key, p.problem) for p in report.problems] == [(key, problem)]
    assert key in report.summary()


def test_verify_checks_the_manifest_against_the_top_hash(local_store: Store) -> None:
    dataset(local_store)
    result = create_snapshot(local_store, "v1", lock=LOCK)
    manifest = load_manifest(local_store, "v1")
    forged = manifest.set_column(
        manifest.schema.get_field_index("split"),
        "split",
        pa.array(["train"] * manifest.num_rows),
    )
    buffer = io.BytesIO()
    pq.write_table(forged, buffer)
    tamper(local_store, "snapshots/v1/manifest.parquet", buffer.getvalue())
    report = verify_snapshot(local_store, "v1")
    assert any("top hash" in p for p in report.manifest_problems)
    with pytest.raises(IntegrityError, match="top hash"):
        load_manifest(local_store, "v1")
    wrong = verify_snapshot(local_store, "v1", expected_top_hash="0" * 64)
    assert any(result.top_hash in p for p in wrong.manifest_problems)


def test_every_entry_has_a_proof_against_the_top_hash(local_store: Store) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    manifest = load_manifest(local_store, "v1")
    root = load_card(local_store, "v1")["top_hash"]
    for entry in entries(manifest):
        proof = prove(manifest, entry)
        assert verify_proof(root, entry, proof)
        moved = entry.__class__(**{**entry.__dict__, "split": "elsewhere"})
        assert not verify_proof(root, moved, proof)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70, unique=True))
def test_merkle_proofs_hold_for_every_leaf_and_only_there(values: list[bytes]) -> None:
    table = pa.table({"key": [v.hex() for v in values]})
    leaves = merkle.leaf_hashes(table, ["key"])
    levels = merkle.tree_levels(leaves)
    root = merkle.merkle_root(leaves)
    for index in range(len(values)):
        proof = merkle.proof_for(levels, index)
        assert merkle.verify_path(root, bytes(leaves[index]), proof)
        encoded = b"\x00" + values[index].hex().encode()
        assert merkle.leaf_hash(encoded) == bytes(leaves[index])
        if len(values) > 1:
            other = bytes(leaves[(index + 1) % len(values)])
            assert not merkle.verify_path(root, other, proof)
    assert merkle.merkle_root(merkle.leaf_hashes(table.slice(1), ["key"])) != root


def test_diff_reports_added_removed_changed_and_moved() -> None:
    def manifest(rows: list[tuple[str, str, str]]) -> pa.Table:
        return pa.table(
            {
                "key": [r[0] for r in rows],
                "sha256": [r[1] for r in rows],
                "size": [1] * len(rows),
                "split": [r[2] for r in rows],
                "version_id": [None] * len(rows),
            }
        )

    a = manifest([("k1", "h1", "train"), ("k2", "h2", "train"), ("k3", "h3", "test")])
    b = manifest([("k1", "h1", "train"), ("k2", "hX", "validation"), ("k4", "h4", "train")])
    diff = diff_manifests(a, b)
    assert diff.added["key"].to_pylist() == ["k4"]
    assert diff.removed["key"].to_pylist() == ["k3"]
    assert diff.changed.to_pylist() == [
        {"key": "k2", "old_sha256": "h2", "new_sha256": "hX", "old_size": 1, "new_size": 1}
    ]
    assert diff.moved.to_pylist() == [
        {"key": "k2", "old_split": "train", "new_split": "validation"}
    ]
    assert diff_manifests(a, a).identical


def test_diff_of_two_snapshots_and_list(local_store: Store) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    add_batch(local_store, "b2", range(8, 10), slide=False)
    split_dataset(local_store, seed=1)
    create_snapshot(local_store, "v2", lock=LOCK)
    diff = diff_snapshots(local_store, "v1", "v2")
    assert diff.added.num_rows == 3 and diff.removed.num_rows == 0
    assert diff.changed.num_rows == 0 and diff.moved.num_rows == 0
    assert [s.name for s in list_snapshots(local_store)] == ["v1", "v2"]


def test_export_and_reader_round_trip_and_catch_tampering(
    local_store: Store, tmp_path: Path
) -> None:
    dataset(local_store)
    create_snapshot(local_store, "v1", lock=LOCK)
    result = export_snapshot(local_store, "v1")
    assert export_snapshot(local_store, "v1") == result  # exporting again changes nothing
    manifest = load_manifest(local_store, "v1")
    for split, count in result.counts.items():
        text = local_store.read_bytes(f"snapshots/v1/export/{split}.jsonl").decode()
        records = list(iter_export(local_store, text.splitlines()))
        assert len(records) == count
        for record, data in records:
            assert record["url"] == local_store.url_of(record["key"])
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
        read = {entry.key: data for entry, data in iter_split(local_store, "v1", split)}
        assert read == {record["key"]: data for record, data in records}
    assert sum(result.counts.values()) == manifest.num_rows
    folder = open_store(tmp_path / "export")
    elsewhere = export_snapshot(local_store, "v1", folder)
    assert (
        json.loads(folder.read_bytes("index.json"))["top_hash"]
        == load_card(local_store, "v1")["top_hash"]
    )
    assert elsewhere.counts == result.counts

    victim = next(e for e in entries(manifest) if e.split == "train")
    tamper(local_store, victim.key, b"poisoned")
    with pytest.raises(IntegrityError, match=victim.key):
        list(iter_split(local_store, "v1", "train"))
    lines = local_store.read_bytes("snapshots/v1/export/train.jsonl").decode().splitlines()
    with pytest.raises(IntegrityError, match=victim.key):
        list(iter_export(local_store, lines))


def test_leaf_columns_are_the_manifest_columns() -> None:
    assert tuple(MANIFEST_SCHEMA.names) == LEAF_COLUMNS


def test_snapshot_commands(tmp_path: Path) -> None:
    research = tmp_path / "research"
    store = dataset(open_store(research))
    base = ["--research", str(research), "snapshot"]
    created = runner.invoke(app, [*base, "create", "v1", "--retention-days", "1"])
    assert created.exit_code == 0, created.output
    assert "WEAKER THAN WORM" in created.output
    assert runner.invoke(app, [*base, "verify", "v1"]).exit_code == 0
    listed = runner.invoke(app, [*base, "list"])
    assert "v1" in listed.output and "local-read-only" in listed.output
    exported = runner.invoke(app, [*base, "export", "v1", "--output", str(tmp_path / "out")])
    assert exported.exit_code == 0 and (tmp_path / "out" / "index.json").exists()
    key = "dicom/P001/1.2.1/1.2.1.1/0.dcm"
    proved = runner.invoke(app, [*base, "prove", "v1", key])
    assert proved.exit_code == 0 and '"valid": true' in proved.output
    diffed = runner.invoke(app, [*base, "diff", "v1", "v1"])
    assert "0 added, 0 removed, 0 changed, 0 moved" in diffed.output
    tamper(store, key, b"changed")
    failed = runner.invoke(app, [*base, "verify", "v1"])
    assert isinstance(failed.exception, IntegrityError)
    assert key in str(failed.exception) and "changed" in failed.output


def test_parallel_map_keeps_order_and_reports_progress_across_batches() -> None:
    from tasks.parallel import parallel_map

    seen: list[tuple[str, int, int]] = []
    first = parallel_map(lambda x: x * 2, list(range(500)), 3, lambda *a: seen.append(a), "s")
    second = parallel_map(
        lambda x: x * 2, list(range(500, 700)), 3, lambda *a: seen.append(a), "s", (500, 700)
    )
    assert first + second == [x * 2 for x in range(700)]
    assert seen[-1] == ("s", 700, 700)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)

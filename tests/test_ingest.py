"""Ingest: batch readiness, content sniffing, DICOM and slide checks, quarantine, idempotent reruns.

Batches are built here from pydicom's bundled real files and small tifffile-written pyramids, so
these tests do not depend on ``mira sample-data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from mira.errors import InvalidInput, ObjectNotFound, TransientStoreError
from storage import Store, open_store
from tasks.ingest import inspect_objects
from tasks.ingest import stage as ingest
from tasks.ingest.dropzone import find_ready_batches, scan_dropzone
from tasks.ingest.sniff import inspect_object, sniff_format
from tasks.ingest.stage import ingest_batch, read_accepted
from tests.relay import Relay
from tests.seaweedfs import SeaweedServer

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SVS_FIXTURE = Path(__file__).parent / "fixtures" / "cmu_small_region.svs"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242."
REASON_FIELDS = {
    "batch",
    "path",
    "reason",
    "detail",
    "sha256",
    "size",
    "detected_format",
    "stage",
    "time",
    "mira_version",
}


def bundled(name: str) -> bytes:
    return (TEST_FILES / name).read_bytes()


def ct_instance(number: int, *, patient_id: str = "PAT-001", edit: Any = None) -> bytes:
    """CT_small.dcm as a distinct instance (own SOPInstanceUID), optionally edited further."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{UID_ROOT}{number}")
    ds.PatientID = patient_id
    if edit is not None:
        edit(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pyramid_tiff(size: int = 256, levels: int = 3, *, grow: bool = False) -> bytes:
    """A small tiled pyramid (level 0 plus SubIFD levels) at 0.25 um per pixel."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tiff:
        options: dict[str, Any] = {"tile": (64, 64), "compression": "zlib", "metadata": None}
        tiff.write(
            image,
            subifds=levels - 1,
            resolution=(40000, 40000),
            resolutionunit="CENTIMETER",
            **options,
        )
        for _ in range(levels - 1):
            image = np.repeat(np.repeat(image, 2, 0), 2, 1) if grow else image[::2, ::2]
            tiff.write(np.ascontiguousarray(image), subfiletype=1, **options)
    return buffer.getvalue()


def flat_tiff() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((32, 32), np.uint8))
    return buffer.getvalue()


def put_batch(
    store: Store,
    batch: str,
    files: dict[str, bytes],
    *,
    marker: str | None = "ready",
    manifest: dict[str, bytes] | None = None,
) -> None:
    """Drop ``files`` into ``dropzone/<batch>/``; ``manifest`` lists (path, content) promised."""
    for path, data in files.items():
        store.write_bytes(f"dropzone/{batch}/{path}", data)
    if marker == "ready":
        store.write_bytes(f"dropzone/{batch}/_READY", b"")
    elif marker == "manifest":
        promised = files if manifest is None else manifest
        entries = [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in promised.items()
        ]
        store.write_json(f"dropzone/{batch}/manifest.json", {"batch": batch, "files": entries})


def snapshot(store: Store, prefix: str = "") -> list[tuple[str, int, str | None, Any]]:
    return [(o.key, o.size, o.etag, o.last_modified) for o in store.list(prefix)]


def reason_of(store: Store, batch: str, path: str) -> dict[str, Any]:
    record: dict[str, Any] = store.read_json(f"quarantine/{batch}/{path}.reason.json")
    return record


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\0" * 128 + b"DICM" + b"\0" * 8, "dicom"),
        (b"II*\0" + b"\0" * 12, "tiff"),
        (b"MM\0*" + b"\0" * 12, "tiff"),
        (b"II+\0" + b"\0" * 12, "bigtiff"),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", "dicom-no-preamble"),
        (b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100", "dicom-no-preamble"),
        (b"Patient: DOE^JANE\nreferral note", "unknown"),
    ],
)
def test_format_is_sniffed_from_content(head: bytes, expected: str) -> None:
    assert sniff_format(head) == expected


def test_ct_header_is_read_without_pixels() -> None:
    result = inspect_object(bundled("CT_small.dcm"))
    assert result.rejection is None and result.kind == "dicom"
    assert result.dicom is not None
    assert (result.dicom.modality, result.dicom.rows, result.dicom.columns) == ("CT", 128, 128)
    assert result.dicom.frames == 1 and result.dicom.transfer_syntax == "1.2.840.10008.1.2.1"
    assert result.sha256 == hashlib.sha256(bundled("CT_small.dcm")).hexdigest()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_dicom_cut_mid_pixel_data_is_truncated(name: str) -> None:
    data = bundled(name)
    result = inspect_object(data[: len(data) - 700])
    assert result.rejection is not None and result.rejection.reason == "truncated"


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=1, max_value=39205))
def test_no_strict_prefix_of_a_dicom_is_accepted(cut: int) -> None:
    result = inspect_object(bundled("CT_small.dcm")[:cut])
    assert result.rejection is not None


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"])
def test_dicom_without_preamble_is_accepted(name: str) -> None:
    result = inspect_object(bundled(name))
    assert result.detected_format == "dicom-no-preamble"
    assert result.rejection is None and result.dicom is not None
    assert result.dicom.modality == "RTPLAN" and result.dicom.rows is None


def test_dicom_without_sop_instance_uid_is_rejected() -> None:
    result = inspect_object(ct_instance(1, edit=lambda ds: delattr(ds, "SOPInstanceUID")))
    assert result.rejection is not None
    assert result.rejection.reason == "missing-attribute"
    assert "SOPInstanceUID" in result.rejection.detail


def test_checksum_is_checked_against_the_manifest() -> None:
    data = bundled("CT_small.dcm")
    good = hashlib.sha256(data).hexdigest()
    assert inspect_object(data, good).rejection is None
    result = inspect_object(data, hashlib.sha256(b"other").hexdigest())
    assert result.rejection is not None and result.rejection.reason == "checksum-mismatch"


class FailingStream(io.BytesIO):
    """A connection that resets on every read."""

    def read(self, size: int | None = -1) -> bytes:
        raise ConnectionResetError("connection reset by peer")

    def readinto(self, buffer: Any) -> int:
        raise ConnectionResetError("connection reset by peer")


def test_a_failed_read_is_a_storage_error_not_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.0)
    failing = FailingStream(bundled("CT_small.dcm"))  # as a store's stream: translated
    stream: Any = errors.TranslatedReader(failing, "s3://gateway/a.dcm", retry=True)
    with pytest.raises(TransientStoreError, match=r"a\.dcm"):
        inspect_object(stream)


@pytest.mark.s3
def test_an_outage_mid_inspection_is_retried_later_not_quarantined(
    s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.01)
    with Relay(s3_server.config) as relay:
        store = open_store(f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}", relay.config)
        store.write_bytes("a.dcm", bundled("CT_small.dcm"))
        with store.open_read("a.dcm") as stream:
            relay.cut()  # after the open (a HEAD), before the first GET
            with pytest.raises(TransientStoreError):
                inspect_object(stream)


def test_small_pyramid_is_a_slide() -> None:
    result = inspect_object(pyramid_tiff())
    assert result.rejection is None and result.kind == "slide" and result.slide is not None
    assert (result.slide.width, result.slide.height, result.slide.levels) == (256, 256, 3)
    assert result.slide.mpp == pytest.approx(0.25) and result.slide.vendor == "generic"


@pytest.mark.skipif(not SVS_FIXTURE.exists(), reason="run tests/fetch_fixtures.py first")
def test_aperio_slide_is_recognised_as_svs() -> None:
    with SVS_FIXTURE.open("rb") as stream:
        result = inspect_object(stream)
    assert result.detected_format == "svs" and result.slide is not None
    assert result.slide.vendor == "aperio" and result.slide.mpp == pytest.approx(0.499)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pyramid_tiff()[:30000], "truncated"),
        (pyramid_tiff(size=128, grow=True), "invalid-pyramid"),
        (flat_tiff(), "unsupported-type"),
        (b"II*\0" + b"\xff" * 60, "unreadable"),
    ],
)
def test_broken_tiffs_are_rejected(data: bytes, reason: str) -> None:
    result = inspect_object(data)
    assert result.rejection is not None and result.rejection.reason == reason


def test_readiness_needs_a_marker_or_a_complete_manifest(store: Store) -> None:
    ct = bundled("CT_small.dcm")
    put_batch(store, "marked", {"a.dcm": ct})
    put_batch(store, "manifested", {"a.dcm": ct, "b.dcm": ct}, marker="manifest")
    put_batch(store, "uploading", {"a.dcm": ct}, marker=None)
    put_batch(
        store, "partial", {"a.dcm": ct}, marker="manifest", manifest={"a.dcm": ct, "b.dcm": ct}
    )
    store.write_bytes("dropzone/garbled/a.dcm", ct)
    store.write_bytes("dropzone/garbled/manifest.json", b"{not json")
    store.write_bytes("dropzone-old/other/_READY", b"")  # a sibling prefix is not a batch

    ready = {ref.name: ref for ref in find_ready_batches(store)}
    assert set(ready) == {"marked", "manifested"}
    assert ready["marked"].marker == "ready" and ready["marked"].manifest_sha256 is None
    assert ready["manifested"].marker == "manifest" and ready["manifested"].file_count == 2
    manifest = store.read_bytes("dropzone/manifested/manifest.json")
    assert ready["manifested"].manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    waiting = {w.name: w.reason for w in scan_dropzone(store).waiting}
    assert set(waiting) == {"uploading", "partial", "garbled"}
    assert "b.dcm" in waiting["partial"]
    with pytest.raises(InvalidInput, match="not ready"):
        ingest_batch(store, "partial")
    with pytest.raises(ObjectNotFound):
        ingest_batch(store, "absent")
    assert not store.exists("ingest/partial/summary.json")


def mixed_batch() -> dict[str, bytes]:
    ct = ct_instance(1)
    return {
        "DOE_JANE/CT/IM0001.dcm": ct,
        "DOE_JANE/CT/IM0099.dcm": ct,
        "DOE_JANE/CT/IM0002.dcm": ct[: len(ct) - 5000],
        "DOE_JANE/CT/IM0003.dcm": b"",
        "DOE_JANE/CT/IM0004.dcm": b"Referral note for DOE^JANE\n",
        "DOE_JANE/CT/IM0005.dcm": ct_instance(5, edit=lambda ds: delattr(ds, "SOPInstanceUID")),
        "DOE_JANE/RT/plan": bundled("ExplVR_LitEndNoMeta.dcm"),
        "DOE_JANE/scan.txt": ct_instance(6),
        "slides/S1.tiff": pyramid_tiff(),
        "slides/S2.tiff": pyramid_tiff()[:30000],
    }


def test_batch_end_to_end(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        inspect_objects, "IN_MEMORY_BYTES", 1000
    )  # DICOMs and slides take the stream path
    files = mixed_batch()
    put_batch(store, "b1", files)
    dropzone_before = snapshot(store, "dropzone")
    calls: list[tuple[int, int]] = []

    result = ingest_batch(store, "b1", progress=lambda done, total: calls.append((done, total)))

    assert (result.accepted, result.duplicates, result.already_done) == (4, 1, False)
    assert result.quarantined == {
        "empty-file": 1,
        "missing-attribute": 1,
        "truncated": 2,
        "unsupported-type": 1,
    }
    assert result.accepted + result.duplicates + sum(result.quarantined.values()) == len(files)
    assert calls[-1] == (len(files), len(files))
    table = read_accepted(store, "b1")
    assert table.num_rows == 4 and result.accepted_key == "ingest/b1/accepted.parquet"
    rows = {row["path"]: row for row in table.to_pylist()}
    assert not ingest.is_ingested(store, "b2") and ingest.is_ingested(store, "b1")
    assert set(rows) == {
        "DOE_JANE/CT/IM0001.dcm",
        "DOE_JANE/RT/plan",
        "DOE_JANE/scan.txt",
        "slides/S1.tiff",
    }
    assert rows["DOE_JANE/CT/IM0001.dcm"]["patient_id"] == "PAT-001"
    assert rows["DOE_JANE/CT/IM0001.dcm"]["sop_instance_uid"] == f"{UID_ROOT}1"
    assert rows["DOE_JANE/scan.txt"]["format"] == "dicom"
    assert rows["slides/S1.tiff"]["format"] == "slide"
    assert rows["slides/S1.tiff"]["slide_levels"] == 3
    assert result.bytes == sum(len(files[p]) for p in rows)
    for path, reason in [
        ("DOE_JANE/CT/IM0002.dcm", "truncated"),
        ("DOE_JANE/CT/IM0003.dcm", "empty-file"),
        ("DOE_JANE/CT/IM0004.dcm", "unsupported-type"),
        ("DOE_JANE/CT/IM0005.dcm", "missing-attribute"),
        ("slides/S2.tiff", "truncated"),
    ]:
        record = reason_of(store, "b1", path)
        assert set(record) == REASON_FIELDS
        assert (record["batch"], record["path"], record["reason"]) == ("b1", path, reason)
        assert store.read_bytes(f"quarantine/b1/{path}") == files[path]
        assert record["sha256"] == hashlib.sha256(files[path]).hexdigest()
        assert record["size"] == len(files[path])
    summary = store.read_json("ingest/b1/summary.json")
    assert summary["duplicate_objects"][0]["path"] == "DOE_JANE/CT/IM0099.dcm"
    assert summary["files"] == len(files) and summary["started"] <= summary["finished"]
    assert snapshot(store, "dropzone") == dropzone_before

    everything = snapshot(store)
    again = ingest_batch(store, "b1")
    assert again.already_done and again.accepted == 4 and again.quarantined == result.quarantined
    assert snapshot(store) == everything


def test_manifest_batch_checks_every_listed_checksum(local_store: Store) -> None:
    good, tampered, extra = ct_instance(1), ct_instance(2), ct_instance(3)
    promised = {"a.dcm": good, "b.dcm": ct_instance(2, patient_id="PAT-002")}
    put_batch(
        local_store, "m1", {"a.dcm": good, "b.dcm": tampered}, marker="manifest", manifest=promised
    )
    local_store.write_bytes("dropzone/m1/c.dcm", extra)

    result = ingest_batch(local_store, "m1")

    assert result.accepted == 1
    assert result.quarantined == {"checksum-mismatch": 1, "not-in-manifest": 1}
    assert reason_of(local_store, "m1", "b.dcm")["reason"] == "checksum-mismatch"
    summary = local_store.read_json("ingest/m1/summary.json")
    assert summary["marker"] == "manifest" and summary["manifest_sha256"]


def test_duplicate_uid_across_batches(local_store: Store) -> None:
    first = ct_instance(1)
    put_batch(local_store, "b1", {"x/IM1.dcm": first})
    assert ingest_batch(local_store, "b1").accepted == 1
    changed = ct_instance(1, patient_id="PAT-999")
    put_batch(
        local_store, "b2", {"y/IM1.dcm": changed, "y/IM2.dcm": first, "y/IM3.dcm": ct_instance(3)}
    )

    result = ingest_batch(local_store, "b2")

    assert (result.accepted, result.duplicates) == (1, 1)
    assert result.quarantined == {"duplicate-uid-conflict": 1}
    record = reason_of(local_store, "b2", "y/IM1.dcm")
    assert record["reason"] == "duplicate-uid-conflict" and "b1" in record["detail"]
    assert [row["path"] for row in read_accepted(local_store, "b2").to_pylist()] == ["y/IM3.dcm"]


def test_batch_changed_after_ingest_is_refused(local_store: Store) -> None:
    put_batch(local_store, "b1", {"a.dcm": ct_instance(1)})
    ingest_batch(local_store, "b1")
    local_store.write_bytes("dropzone/b1/late.dcm", ct_instance(2))
    with pytest.raises(InvalidInput, match="changed after it was ingested"):
        ingest_batch(local_store, "b1")


def test_read_accepted_needs_a_committed_batch(local_store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        read_accepted(local_store, "never")
    with pytest.raises(InvalidInput):
        read_accepted(local_store, "../escape")


@pytest.mark.slow
def test_large_batches_are_inspected_on_dask_in_groups(
    local_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"p/IM{n:03d}.dcm": ct_instance(n) for n in range(30)}
    files["p/bad.dcm"] = b""
    put_batch(local_store, "big", files)
    monkeypatch.setattr(inspect_objects, "INLINE_MAX_FILES", 10)
    calls: list[tuple[int, int]] = []

    result = ingest_batch(local_store, "big", workers=1, progress=lambda d, t: calls.append((d, t)))

    assert (result.accepted, result.quarantined) == (30, {"empty-file": 1})
    assert len(calls) == 2 and calls[-1] == (31, 31)  # two groups of 25 files at most
    assert json.loads(local_store.read_bytes("ingest/big/summary.json"))["files"] == 31

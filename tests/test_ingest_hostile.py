"""Ingest against hostile and odd inputs: large header elements, short fragments, manifest sizes,
decompression bombs, links and special files, undecodable names and S3 folder markers.

Every hostile file is generated here. The cases that used to exhaust memory or hang (bombs,
``/dev/zero``, a FIFO) run the ingest in a child process watched from outside: the child is killed
when its resident memory passes ``RSS_KILL_BYTES`` or it outlives its deadline, so a regression
fails the test instead of the machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pydicom
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from mira.errors import ObjectNotFound
from mira.settings import Settings
from storage import Store, open_store
from tasks.ingest.dropzone import scan_dropzone
from tasks.ingest.inspection import DEFAULT_MAX_DECODED_BYTES
from tasks.ingest.sniff import inspect_object
from tasks.ingest.stage import ingest_batch, read_accepted
from tests.slides import write_slide

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
RSS_GROWTH_LIMIT = 500 * MiB  # what one bomb may add to the ingest's peak resident memory
RSS_KILL_BYTES = 2048 * MiB  # the watchdog's hard stop (the bombs took ingest past 4 GB)
GUARD_SECONDS = 120.0
GUARDED_INGEST = """
import json, resource, sys
from storage import open_store
from tasks.ingest.stage import ingest_batch
store = open_store(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = ingest_batch(store, sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"accepted": result.accepted, "quarantined": dict(result.quarantined),
                  "files": result.files, "growth": (after - before) * 1024}))
"""


def bundled(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def put_batch(store: Store, batch: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        store.write_bytes(f"dropzone/{batch}/{path}", data)
    store.write_bytes(f"dropzone/{batch}/_READY", b"")


def reason_of(store: Store, batch: str, path: str) -> dict[str, Any]:
    record: dict[str, Any] = store.read_json(f"quarantine/{batch}/{path}.reason.json")
    return record


def ingest_guarded(gateway: Path, batch: str) -> dict[str, Any]:
    """Ingest ``batch`` in a child process under a memory and time watchdog; its result."""
    out, err = gateway.parent / f"{batch}.out", gateway.parent / f"{batch}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", GUARDED_INGEST, str(gateway), batch],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
        )
        watched = psutil.Process(child.pid)
        deadline = time.monotonic() + GUARD_SECONDS
        while child.poll() is None:
            try:
                rss = watched.memory_info().rss
            except psutil.NoSuchProcess:
                break
            if rss > RSS_KILL_BYTES or time.monotonic() > deadline:
                child.kill()
                child.wait()
                pytest.fail(f"ingest killed by the watchdog: {rss / MiB:.0f} MiB resident")
            time.sleep(0.02)
    assert child.wait() == 0, err.read_text()[-3000:]
    result: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    return result


# Item 2: an element over the 64 KiB defer size before the pixel data.


def with_large_element(name: str, element: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))
    blob = bytes(range(256)) * 600  # 150 KiB
    if element == "icc-profile":
        ds.add_new(0x00282000, "OB", blob[: 70 * 1024])
    else:  # a Siemens CSA-like private header
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        ds.add_new(0x00291010, "OB", blob)
    return encoded(ds)


@pytest.mark.parametrize("element", ["icc-profile", "csa-header"])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"])
def test_dicom_with_a_large_element_before_pixel_data_is_accepted(name: str, element: str) -> None:
    data = with_large_element(name, element)
    original = pydicom.dcmread(get_testdata_file(name))

    for source in (data, io.BytesIO(data)):
        result = inspect_object(source)
        assert result.rejection is None, result.rejection
        assert result.dicom is not None
        assert (result.dicom.rows, result.dicom.columns) == (original.Rows, original.Columns)


@pytest.mark.parametrize("element", ["icc-profile", "csa-header"])
def test_a_large_element_does_not_hide_a_cut(element: str) -> None:
    data = with_large_element("CT_small.dcm", element)
    for cut in (len(data) - 700, len(data) // 2, 2000):
        result = inspect_object(data[:cut])
        assert result.rejection is not None and result.rejection.reason == "truncated", cut


# Item 13: short fragments and the manifest's sizes.


@pytest.mark.parametrize("cut", [133, 140, 150, 200, 330, 364])
def test_short_dicom_fragments_are_truncated(cut: int) -> None:
    result = inspect_object(bundled("CT_small.dcm")[:cut])
    assert result.rejection is not None
    assert result.rejection.reason == "truncated", result.rejection.detail


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_cut_dicom_is_truncated(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["CT_small.dcm", "JPEG2000.dcm"]))  # no trailing padding
    whole = bundled(name)
    cut = data.draw(st.integers(min_value=132, max_value=len(whole) - 1))
    result = inspect_object(whole[:cut])
    assert result.rejection is not None
    assert result.rejection.reason == "truncated", (cut, result.rejection.detail)


def test_manifest_sizes_are_compared(local_store: Store) -> None:
    ct = bundled("CT_small.dcm")
    mr = bundled("MR_small.dcm")
    files = {"wrong-size.dcm": ct, "cut.dcm": ct[:20000], "good.dcm": mr}
    for path, data in files.items():
        local_store.write_bytes(f"dropzone/m1/{path}", data)
    entries = [
        {"path": "wrong-size.dcm", "sha256": hashlib.sha256(ct).hexdigest(), "size": 1000},
        {"path": "cut.dcm", "sha256": hashlib.sha256(ct).hexdigest(), "size": len(ct)},
        {"path": "good.dcm", "sha256": hashlib.sha256(mr).hexdigest(), "size": len(mr)},
    ]
    local_store.write_json("dropzone/m1/manifest.json", {"batch": "m1", "files": entries})

    result = ingest_batch(local_store, "m1")

    assert result.accepted == 1 and result.quarantined == {"size-mismatch": 2}
    record = reason_of(local_store, "m1", "cut.dcm")
    assert record["reason"] == "size-mismatch" and record["size"] == 20000
    assert str(len(ct)) in record["detail"] and "20000" in record["detail"]


# Item 6: decompression bombs.


def jpeg_tile_bomb(path: Path) -> int:
    """A small JPEG slide whose first tile's frame header claims 60000 x 60000 pixels."""
    write_slide(path, 1024, 1024, codec="jpeg", levels=2)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = int(page.dataoffsets[0]), int(page.databytecounts[0])
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0", offset, offset + count)
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)  # frame height, width
    path.write_bytes(bytes(data))
    return len(data)


def deflated_dicom_bomb(inflated: int) -> bytes:
    """A deflated-transfer-syntax CT whose pixel data inflates to about ``inflated`` bytes.

    The pixel data is zeros compressed once in a 16 MiB block and repeated (each block is
    flushed, so blocks do not refer to one another): built in a second, never held inflated.
    """
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    small = encoded(ds)
    meta_end = 144 + struct.unpack_from("<I", small, 140)[0]
    header = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    block = 16 * MiB
    blocks = max(1, inflated // block)
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, blocks * block)
    first = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = first.compress(header + pixels) + first.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    repeated = zeros.compress(bytes(block)) + zeros.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    return small[:meta_end] + start + repeated * blocks + end


def test_jpeg_tile_bomb_is_quarantined_in_bounded_memory(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway"
    batch = gateway / "dropzone" / "bomb"
    batch.mkdir(parents=True)
    size = jpeg_tile_bomb(batch / "slide.tiff")
    (batch / "_READY").write_bytes(b"")
    assert size < 300_000

    result = ingest_guarded(gateway, "bomb")

    assert result["quarantined"] == {"decompression-bomb": 1}
    assert result["growth"] < RSS_GROWTH_LIMIT
    record = reason_of(open_store(gateway), "bomb", "slide.tiff")
    assert "60000" in record["detail"]


@pytest.mark.slow
def test_deflated_dicom_bomb_is_quarantined_in_bounded_memory(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway"
    store = open_store(gateway)
    bomb = deflated_dicom_bomb(1536 * MiB)
    assert len(bomb) < 2 * MiB
    put_batch(store, "bomb", {"IM0001.dcm": bomb, "IM0002.dcm": bundled("CT_small.dcm")})

    result = ingest_guarded(gateway, "bomb")

    assert result["accepted"] == 1
    assert result["quarantined"] == {"decompression-bomb": 1}
    assert result["growth"] < RSS_GROWTH_LIMIT
    record = reason_of(store, "bomb", "IM0001.dcm")
    assert str(DEFAULT_MAX_DECODED_BYTES) in record["detail"]


def test_deflated_dicoms_are_inflated_within_the_ceiling(local_store: Store) -> None:
    deflated = bundled("image_dfl.dcm")
    small_bomb = deflated_dicom_bomb(32 * MiB)
    assert inspect_object(deflated).rejection is None
    assert inspect_object(small_bomb).rejection is None
    refused = inspect_object(small_bomb, max_decoded_bytes=16 * MiB)
    assert refused.rejection is not None and refused.rejection.reason == "decompression-bomb"
    cut = inspect_object(small_bomb[: len(small_bomb) - 100])
    assert cut.rejection is not None and cut.rejection.reason == "truncated"
    put_batch(local_store, "d1", {"a.dcm": small_bomb})
    result = ingest_batch(local_store, "d1", max_decoded_bytes=16 * MiB)
    assert result.quarantined == {"decompression-bomb": 1}


@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000", "zstd", "none"])
def test_slides_pass_the_decoded_size_checks(tmp_path: Path, codec: Any) -> None:
    path = write_slide(tmp_path / "slide.tiff", 600, 700, codec=codec, levels=2)
    result = inspect_object(path.read_bytes())
    assert result.rejection is None, result.rejection
    refused = inspect_object(path.read_bytes(), max_decoded_bytes=256 * 256 * 3 - 1)
    assert refused.rejection is not None and refused.rejection.reason == "decompression-bomb"


def test_a_declared_tile_over_the_ceiling_is_never_decoded() -> None:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tiff:
        tiff.write(np.zeros((1024, 1024), np.uint8), tile=(1024, 1024), compression="zlib")
        tiff.write(np.zeros((512, 512), np.uint8), tile=(512, 512), compression="zlib")
    result = inspect_object(buffer.getvalue(), max_decoded_bytes=MiB - 1)
    assert result.rejection is not None and result.rejection.reason == "decompression-bomb"


def test_the_ceiling_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().ingest_max_decoded_bytes == DEFAULT_MAX_DECODED_BYTES
    monkeypatch.setenv("MIRA_INGEST_MAX_DECODED_BYTES", str(64 * MiB))
    assert Settings().ingest_max_decoded_bytes == 64 * MiB


# Item 7: links and special files in the drop zone.


def test_links_and_special_files_are_quarantined_by_name_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "other-patient.dcm").write_bytes(bundled("MR_small.dcm"))
    gateway = tmp_path / "gateway"
    batch = gateway / "dropzone" / "b1"
    batch.mkdir(parents=True)
    (batch / "good.dcm").write_bytes(bundled("CT_small.dcm"))
    (batch / "linked.dcm").symlink_to(outside / "other-patient.dcm")
    (batch / "passwd").symlink_to("/etc/passwd")
    (batch / "zero").symlink_to("/dev/zero")
    (batch / "dangling").symlink_to(tmp_path / "nothing-here")
    (batch / "folder").symlink_to(outside, target_is_directory=True)
    os.mkfifo(batch / "fifo")
    (batch / "_READY").write_bytes(b"")
    special = {"linked.dcm", "passwd", "zero", "dangling", "folder", "fifo"}

    result = ingest_guarded(gateway, "b1")

    assert result["accepted"] == 1 and result["files"] == 7
    assert result["quarantined"] == {"not-a-regular-file": 6}
    store = open_store(gateway)
    assert [row["path"] for row in read_accepted(store, "b1").to_pylist()] == ["good.dcm"]
    for name in special:
        record = reason_of(store, "b1", name)
        assert record["reason"] == "not-a-regular-file"
        assert record["sha256"] is None and record["size"] is None
        assert not (gateway / "quarantine" / "b1" / name).exists()  # no copy: never opened
    assert "symbolic link" in reason_of(store, "b1", "folder")["detail"]
    assert "FIFO" in reason_of(store, "b1", "fifo")["detail"]
    passwd_line = Path("/etc/passwd").read_bytes().splitlines()[0]
    for path in gateway.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.parent != batch:
            assert passwd_line not in path.read_bytes(), path
    summary = json.loads((gateway / "ingest" / "b1" / "summary.json").read_text())
    assert {o["path"] for o in summary["quarantined_objects"]} == special
    again = ingest_guarded(gateway, "b1")  # the recorded result, the links counted as before
    assert again["quarantined"] == result["quarantined"]


def test_local_listing_reports_links_and_special_files_without_following(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"outside")
    store = open_store(tmp_path / "store")
    store.write_bytes("a/plain", b"inside")
    root = tmp_path / "store"
    (root / "a" / "link").symlink_to(outside / "secret.dcm")
    (root / "a" / "folder").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "a" / "fifo")

    assert [info.key for info in store.list("a")] == ["a/plain"]
    assert [(entry.key, entry.kind) for entry in store.list_special("a")] == [
        ("a/fifo", "fifo"),
        ("a/folder", "symlink"),
        ("a/link", "symlink"),
    ]
    assert [entry.key for entry in store.list_special("a/link")] == ["a/link"]
    for key in ("a/link", "a/fifo", "a/folder/secret.dcm"):
        assert not store.exists(key)
        with pytest.raises(ObjectNotFound):
            store.read_bytes(key)
        with pytest.raises(ObjectNotFound):
            store.copy(key, "b/copy")
    assert not (root / "b").exists()


def test_a_linked_marker_or_manifest_does_not_make_a_batch_ready(tmp_path: Path) -> None:
    store = open_store(tmp_path / "gateway")
    store.write_bytes("dropzone/b1/a.dcm", bundled("CT_small.dcm"))
    store.write_bytes("elsewhere/_READY", b"")
    folder = tmp_path / "gateway" / "dropzone" / "b1"
    (folder / "_READY").symlink_to(tmp_path / "gateway" / "elsewhere" / "_READY")
    (folder / "manifest.json").symlink_to("/etc/passwd")

    waiting = {batch.name: batch.reason for batch in scan_dropzone(store).waiting}

    assert "no _READY marker or manifest.json" in waiting["b1"]


# Item 8: a file name that is not UTF-8.


def test_a_non_utf8_file_name_is_quarantined_and_the_batch_goes_on(local_store: Store) -> None:
    put_batch(local_store, "b1", {"good.dcm": bundled("CT_small.dcm")})
    folder = Path(local_store.filesystem_path("dropzone/b1"))
    bad = os.fsdecode(os.fsencode(folder) + b"/\xff\xfeIM1.dcm")
    Path(bad).write_bytes(bundled("MR_small.dcm"))

    result = ingest_batch(local_store, "b1")

    assert result.accepted == 1 and result.quarantined == {"invalid-name": 1}
    escaped = "\\xff\\xfeIM1.dcm"
    record = reason_of(local_store, "b1", escaped)
    assert record["path"] == escaped and record["reason"] == "invalid-name"
    assert local_store.read_bytes(f"quarantine/b1/{escaped}") == bundled("MR_small.dcm")
    summary = local_store.read_json("ingest/b1/summary.json")
    assert summary["quarantined_objects"] == [{"path": escaped, "reason": "invalid-name"}]
    assert ingest_batch(local_store, "b1").already_done


# Item 9: S3 folder markers.


@pytest.mark.s3
def test_s3_folder_markers_are_ignored(s3_store: Any) -> None:
    put_batch(s3_store, "b1", {"sub/IM1.dcm": bundled("CT_small.dcm")})
    for marker in ("dropzone/b1/sub/", "dropzone/b1/empty/"):
        s3_store.fs.call_s3(
            "put_object", Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/{marker}", Body=b""
        )
    assert [info.key for info in s3_store.list("dropzone/b1")] == [
        "dropzone/b1/_READY",
        "dropzone/b1/sub/IM1.dcm",
    ]
    assert list(s3_store.list_special("dropzone")) == []

    result = ingest_batch(s3_store, "b1")

    assert (result.accepted, result.files, dict(result.quarantined)) == (1, 1, {})
    assert ingest_batch(s3_store, "b1").already_done

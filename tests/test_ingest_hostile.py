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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from storage import Store
from tasks.ingest.sniff import inspect_object
from tasks.ingest.stage import ingest_batch

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


def testdata(name: str) -> bytes:
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
    result = inspect_object(testdata("CT_small.dcm")[:cut])
    assert result.rejection is not None
    assert result.rejection.reason == "truncated", result.rejection.detail


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_cut_dicom_is_truncated(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["CT_small.dcm", "JPEG2000.dcm"]))  # no trailing padding
    whole = testdata(name)
    cut = data.draw(st.integers(min_value=132, max_value=len(whole) - 1))
    result = inspect_object(whole[:cut])
    assert result.rejection is not None
    assert result.rejection.reason == "truncated", (cut, result.rejection.detail)


def test_manifest_sizes_are_compared(local_store: Store) -> None:
    ct = testdata("CT_small.dcm")
    mr = testdata("MR_small.dcm")
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

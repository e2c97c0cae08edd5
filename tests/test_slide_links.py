"""Slides belong to patients: a manifest links a slide to its patient's ID, de-identification maps
it through the patient's own pseudonym, and splits and snapshots keep the two together."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from mira.errors import InvalidInput
from storage import Store
from tasks.dataset import LockPolicy, catalog, create_snapshot, load_manifest, split_dataset
from tasks.dataset.split import patient_splits
from tasks.deid import DeidPolicy, policy_from_mapping, pseudonymize_patient_id
from tasks.deid.stage import deidentify_batch
from tasks.ingest.dropzone import load_batch
from tasks.ingest.stage import ingest_batch, read_accepted
from tasks.sample.generate import PATHOLOGY_BATCH, RADIOLOGY_BATCH, generate_sample_data
from tests.slides import write_slide

KEY = b"slide-links-test-key-0123456789ab"
PATIENT = "MRN-4471-0093"


def dicom_of(patient_id: str) -> bytes:
    """pydicom's real CT slice, as the patient ``patient_id``'s."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.PatientID = patient_id
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def slide_bytes(tmp_path: Path) -> bytes:
    return write_slide(tmp_path / "slide.tiff", 512, 512, levels=2).read_bytes()


def drop_batch(gateway: Store, batch: str, files: dict[str, bytes], links: dict[str, Any]) -> None:
    """Upload ``files`` and a manifest listing them, with ``links[path]`` as patient_id."""
    entries = []
    for path, data in sorted(files.items()):
        gateway.write_bytes(f"dropzone/{batch}/{path}", data)
        entry = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        if path in links:
            entry["patient_id"] = links[path]
        entries.append(entry)
    manifest = json.dumps({"batch": batch, "files": entries}).encode()
    gateway.write_bytes(f"dropzone/{batch}/manifest.json", manifest)


def test_a_manifest_links_a_slide_to_its_patient(local_store: Store, tmp_path: Path) -> None:
    files = {"ct/IM0001.dcm": dicom_of(PATIENT), "path/case.tiff": slide_bytes(tmp_path)}
    drop_batch(local_store, "b1", files, {"path/case.tiff": PATIENT})
    result = ingest_batch(local_store, "b1")
    assert result.accepted == 2 and not result.quarantined
    rows = {r["path"]: r for r in read_accepted(local_store, "b1").to_pylist()}
    assert rows["path/case.tiff"]["patient_id"] == PATIENT
    assert rows["ct/IM0001.dcm"]["patient_id"] == PATIENT


def test_a_link_on_a_dicom_file_is_quarantined(local_store: Store, tmp_path: Path) -> None:
    files = {"ct/IM0001.dcm": dicom_of(PATIENT), "path/case.tiff": slide_bytes(tmp_path)}
    drop_batch(local_store, "b1", files, {"ct/IM0001.dcm": PATIENT, "path/case.tiff": PATIENT})
    result = ingest_batch(local_store, "b1")
    assert result.accepted == 1 and result.quarantined == {"patient-link-not-slide": 1}
    record = local_store.read_json("quarantine/b1/ct/IM0001.dcm.reason.json")
    assert record["reason"] == "patient-link-not-slide" and "only a slide" in record["detail"]


@pytest.mark.parametrize(
    "link", [42, None, "", "   ", "MRN\\0093", "MRN\n0093", "M" * 65, ["MRN-1"]]
)
def test_a_malformed_link_refuses_the_batch(local_store: Store, tmp_path: Path, link: Any) -> None:
    drop_batch(
        local_store, "b1", {"path/case.tiff": slide_bytes(tmp_path)}, {"path/case.tiff": link}
    )
    with pytest.raises(InvalidInput, match=r"files\[0\]\.patient_id is not a patient ID") as err:
        load_batch(local_store, "b1")
    assert "MRN" not in str(err.value)  # the value is a patient's identifier: never repeated
    with pytest.raises(InvalidInput, match="patient_id"):
        ingest_batch(local_store, "b1")
    assert not local_store.exists("ingest/b1/summary.json")


def test_a_linked_slide_carries_its_patients_pseudonym(local_store: Store, tmp_path: Path) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    drop_batch(gateway, "b1", {"ct/IM0001.dcm": dicom_of(PATIENT)}, {})
    drop_batch(gateway, "b2", {"case.tiff": slide_bytes(tmp_path)}, {"case.tiff": PATIENT})
    for batch in ("b1", "b2"):
        ingest_batch(gateway, batch)
        deidentify_batch(gateway, research, batch, KEY, DeidPolicy.default())
    (instance,) = catalog.read_table(research, "instances").to_pylist()
    (slide,) = catalog.read_table(research, "slides").to_pylist()
    assert slide["patient_id"] == instance["patient_id"] == pseudonymize_patient_id(PATIENT, KEY)
    # The original ID reaches neither an object, a key nor a catalog value of the research store.
    for info in research.list():
        assert PATIENT not in info.key and PATIENT.encode() not in research.read_bytes(info.key)
    for table in catalog.TABLES:
        values = catalog.read_table(research, table).to_pylist()
        assert PATIENT not in json.dumps(values, default=str)


def test_an_unlinked_slide_keeps_no_patient(local_store: Store, tmp_path: Path) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    drop_batch(gateway, "b1", {"case.tiff": slide_bytes(tmp_path)}, {})
    ingest_batch(gateway, "b1")
    deidentify_batch(gateway, research, "b1", KEY, DeidPolicy.default())
    (slide,) = catalog.read_table(research, "slides").to_pylist()
    assert slide["patient_id"] == ""
    result = split_dataset(research)
    assert result.unlinked_slides == 1 and patient_splits(research) == {
        f"slide:{slide['slide_id']}": next(iter(patient_splits(research).values()))
    }


def test_sample_slides_split_and_snapshot_with_their_patients_ct(
    local_store: Store, tmp_path: Path
) -> None:
    """The demo's data end to end: each patient's CT and slide land in the same split and the
    snapshot names the same patient for both."""
    sample = tmp_path / "sample"
    generate_sample_data(sample, patients=3, slides=3, slide_size=1024)
    gateway, research = local_store.child("gateway"), local_store.child("research")
    # A few CT slices per patient and one batch per slide keep every stage inline (no Dask).
    ct = {
        path.relative_to(sample / RADIOLOGY_BATCH).as_posix(): path.read_bytes()
        for path in sorted((sample / RADIOLOGY_BATCH).rglob("IM000[12].dcm"))
        if path.parent.name.endswith("_CT")
    }
    assert len(ct) == 6
    drop_batch(gateway, "ct", ct, {})
    manifest = json.loads((sample / PATHOLOGY_BATCH / "manifest.json").read_text())
    batches = ["ct"]
    for number, entry in enumerate(manifest["files"]):
        batch = f"slides-{number}"
        data = (sample / PATHOLOGY_BATCH / entry["path"]).read_bytes()
        drop_batch(gateway, batch, {"case.svs": data}, {"case.svs": entry["patient_id"]})
        batches.append(batch)
    for batch in batches:
        ingest_batch(gateway, batch)
        deidentify_batch(gateway, research, batch, KEY, DeidPolicy.default())
    result = split_dataset(research, stratify_by=())
    assert result.patients == 3 and result.unlinked_slides == 0
    assignment = patient_splits(research)
    ct_patients = {r["patient_id"] for r in catalog.read_table(research, "instances").to_pylist()}
    slides = catalog.read_table(research, "slides").to_pylist()
    assert {s["patient_id"] for s in slides} == ct_patients == set(assignment)
    create_snapshot(research, "v1", lock=LockPolicy(mode="GOVERNANCE", days=1))
    rows = load_manifest(research, "v1").to_pylist()
    by_patient: dict[str, set[str]] = {}
    kinds: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
        kinds.setdefault(row["patient_id"], set()).add(row["key"].split("/")[0])
    assert set(by_patient) == ct_patients
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert all({"dicom", "slides"} <= found for found in kinds.values())


def test_the_linked_id_is_searched_for_in_the_slide_output(
    local_store: Store, tmp_path: Path
) -> None:
    """A site whose kept scanner field holds the patient's ID: the link makes that a leak, and
    the slide is held as phi-suspect (the flagged place named, never the ID)."""
    gateway, research = local_store.child("gateway"), local_store.child("research")
    slide = write_slide(tmp_path / "case.svs", 512, 512, kind="svs", levels=2).read_bytes()
    keeps = policy_from_mapping({"name": "keeps-scanner", "slide_safe_keys": ["ScanScope ID"]})
    drop_batch(gateway, "b1", {"case.svs": slide}, {"case.svs": "SS9876"})
    ingest_batch(gateway, "b1")
    result = deidentify_batch(gateway, research, "b1", KEY, keeps)
    assert result.quarantined == {"phi-suspect": 1} and result.slides == 0
    assert [o.key for o in research.list() if not o.key.startswith("catalog/")] == []
    reason = gateway.read_json("quarantine/b1/case.svs.reason.json")
    assert reason["attributes"] == ["page[0].ImageDescription"]
    assert "SS9876" not in json.dumps(reason)

"""De-identification on uploads as labs have them: placeholder patient names that share words
with mira's own text or with coded vocabulary, and inputs that share a SOP Instance UID."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from storage import Store, open_store
from tasks import layout
from tasks.deid import DeidPolicy
from tasks.deid.phiscan import collect_identifiers, scan_for_phi
from tasks.deid.stage import deidentify_batch, deidentify_folder
from tasks.ingest.stage import ingest_batch

KEY = b"real-world-test-key-0123456789ab"
IMAGE_COMMENTS = "(0020,4000)"
STUDY_DESCRIPTION = "(0008,1030)"


def ct_bytes(**attributes: object) -> bytes:
    """pydicom's CT_small.dcm (Image Type ORIGINAL\\PRIMARY\\AXIAL) with some values changed."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def folder_run(tmp_path: Path, files: dict[str, bytes]) -> tuple[object, Store, Store]:
    source, output, held = (open_store(tmp_path / name) for name in ("in", "out", "held"))
    for name, data in files.items():
        source.write_bytes(name, data)
    result = deidentify_folder(source, output, held, KEY, DeidPolicy.default())
    return result, output, held


@pytest.mark.parametrize(
    ("name", "image_type"),
    [
        ("PATIENT^NUMBER001", None),  # "Patient" is in mira's code meanings
        ("TEST^PATIENT", None),
        ("ORIGINAL^PRIMARY", None),  # CT_small's own Image Type
        ("DERIVED^SECONDARY", ["DERIVED", "SECONDARY", "AXIAL"]),
    ],
)
def test_names_made_of_mira_text_or_defined_terms_publish_but_free_text_is_caught(
    tmp_path: Path, name: str, image_type: list[str] | None
) -> None:
    extra = {"ImageType": image_type} if image_type else {}
    original = ct_bytes(PatientName=name, **extra)
    result, output, held = folder_run(tmp_path, {"ct.dcm": original})
    assert result.instances == 1 and not result.quarantined  # type: ignore[attr-defined]
    assert list(held.list()) == []
    (published,) = [output.read_bytes(o.key) for o in output.list()]
    dataset = pydicom.dcmread(io.BytesIO(published))
    assert str(dataset.PatientName) != name
    assert len(dataset.DeidentificationMethodCodeSequence) > 1

    # The same words in free text are still identifiers of this record.
    family, given = name.split("^")
    dataset.ImageComments = f"seen by {given} today"
    dataset.StudyDescription = f"{family} follow-up"
    dataset.DeidentificationMethodCodeSequence[0].CodeMeaning = f"{family} {given}"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    hits = scan_for_phi([("out.dcm", buffer.getvalue())], collect_identifiers(original))
    locations = {hit.location for hit in hits}
    assert {IMAGE_COMMENTS, STUDY_DESCRIPTION, "(0012,0064)[0].(0008,0104)"} <= locations


def test_a_coded_value_holding_an_id_is_still_caught() -> None:
    original = ct_bytes(PatientName="DOE^JANE", PatientID="MRN12345")
    dataset = pydicom.dcmread(io.BytesIO(original))
    dataset.BodyPartExamined = "MRN12345"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    hits = scan_for_phi([("out.dcm", buffer.getvalue())], collect_identifiers(original))
    assert "(0018,0015)" in {hit.location for hit in hits}


def test_copies_of_one_instance_give_one_output_and_a_duplicate(tmp_path: Path) -> None:
    data = ct_bytes()
    files = {"a/ct.dcm": data, "b/ct.dcm": data, "c/ct-again.dcm": data}
    result, output, held = folder_run(tmp_path, files)
    assert len(list(output.list())) == 1
    assert result.instances == 1  # type: ignore[attr-defined]
    assert result.duplicates == 2  # type: ignore[attr-defined]
    records = held.read_json("duplicates.json")
    assert {(r["path"], r["duplicate_of"]) for r in records} == {
        ("b/ct.dcm", "a/ct.dcm"),
        ("c/ct-again.dcm", "a/ct.dcm"),
    }


def test_one_uid_with_different_content_is_a_conflict_not_an_overwrite(tmp_path: Path) -> None:
    files = {"first.dcm": ct_bytes(), "second.dcm": ct_bytes(ImageComments="contrast phase 2")}
    result, output, held = folder_run(tmp_path, files)
    assert list(output.list()) == []
    assert result.instances == 0  # type: ignore[attr-defined]
    assert result.quarantined == {"uid-conflict": 2}  # type: ignore[attr-defined]
    for name in files:
        reason = held.read_json(name + layout.REASON_SUFFIX)
        assert reason["reason"] == "uid-conflict"
        assert "first.dcm" in reason["detail"] and "second.dcm" in reason["detail"]


def test_a_resent_instance_with_a_changed_header_does_not_overwrite_the_published_one(
    tmp_path: Path,
) -> None:
    """The README's way out of a refused batch name is to remove the batch's ingest record, after
    which ingest no longer knows the first upload: de-identification must not overwrite it."""
    store = open_store(tmp_path / "store")
    gateway, research = store.child("gateway"), store.child("research")
    gateway.write_bytes("dropzone/batch-0001/ct.dcm", ct_bytes())
    gateway.write_bytes("dropzone/batch-0001/_READY", b"")
    ingest_batch(gateway, "batch-0001")
    first = deidentify_batch(gateway, research, "batch-0001", KEY, DeidPolicy.default())
    assert first.instances == 1
    (key,) = [o.key for o in research.list() if o.key.endswith(".dcm")]
    before = research.read_bytes(key)
    gateway.delete_prefix(f"{layout.INGEST}/batch-0001/")

    resent = ct_bytes(ImageComments="re-sent with a corrected comment")
    gateway.write_bytes("dropzone/batch-0002/ct.dcm", resent)
    gateway.write_bytes("dropzone/batch-0002/_READY", b"")
    ingest_batch(gateway, "batch-0002")
    second = deidentify_batch(gateway, research, "batch-0002", KEY, DeidPolicy.default())
    assert research.read_bytes(key) == before
    assert second.instances == 0 and second.quarantined == {"uid-conflict": 1}
    reason = gateway.read_json(layout.quarantine_key("batch-0002", "ct.dcm") + ".reason.json")
    assert reason["reason"] == "uid-conflict" and "ct.dcm" in reason["detail"]
    assert key in reason["detail"]
    assert not any(b"ct.dcm" in research.read_bytes(o.key) for o in research.list())

"""PHI planted in every attribute of Table E.1-1, in nested sequences, private tags and free
text: none of it may survive, by the project's scanner or by a plain byte search."""

from __future__ import annotations

import io
import warnings
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tasks.deid import DeidPolicy, collect_identifiers, deidentify_dicom, scan_for_phi
from tasks.deid.actions import Action, compile_profile, load_profile_table
from tasks.deid.identifiers import MIN_ALPHA_TOKEN_CHARS, IdentifierMatcher
from tasks.deid.phiscan import identifier_digest

KEY = b"0123456789abcdef0123456789abcdef"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PATIENT_NAME = "PHIDOE^PHIJANE"
PATIENT_ID = "PHIMRN12345"
FIRST_DATE = date(1850, 1, 1)
KEPT = {Action.KEEP}


def planted_value(vr: str, index: int, tag: int) -> Any:
    """A value per VR that carries a unique PHI marker wherever the VR allows text."""
    day = FIRST_DATE + timedelta(days=400 * index)  # further apart than any date shift
    text = {
        "PN": f"PHIFAM{index:03d}^PHIGIV{index:03d}",
        "LO": f"PHILO{index:03d}",
        "SH": f"PHISH{index:03d}",
        "CS": f"PHICS{index:03d}",
        "AE": f"PHIAE{index:03d}",
        "ST": f"PHIST{index:03d} at 12 Elm Street",
        "LT": f"PHILT{index:03d} call 555-867-5309",
        "UT": f"PHIUT{index:03d}",
        "UC": f"PHIUC{index:03d}",
        "UR": f"http://phi{index:03d}.example",
        "DA": day.strftime("%Y%m%d"),
        "DT": day.strftime("%Y%m%d") + "101010",
        "TM": "101010",
        "UI": f"1.2.999.{index}.{tag}",
        "AS": "042Y",
        "DS": f"{index}.5",
        "IS": f"{index}",
        "US": index,
        "OB": f"PHIOB{index:03d}".encode(),
        "UN": f"PHIUN{index:03d}".encode(),
    }
    return text.get(vr)


def nested_item(index: int) -> Dataset:
    """An item holding identifiers two levels deep, plus a private element."""
    inner = Dataset()
    inner.PatientName = f"PHINESTED{index:03d}^DEEP"
    inner.InstitutionName = f"PHIINST{index:03d}"
    inner.ReferencedSOPInstanceUID = f"1.2.999.77.{index}"
    inner.add_new(0x00091010, "LO", f"PHIPRIVNEST{index:03d}")
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = f"1.2.999.66.{index}"
    item.PersonName = f"PHIITEM{index:03d}^NAME"
    item.StudyDate = (FIRST_DATE + timedelta(days=400 * index + 200)).strftime("%Y%m%d")
    item.ProcedureCodeSequence = Sequence([inner])
    return item


def planted_dataset() -> tuple[Dataset, dict[int, Any]]:
    """CT_small with every single-tag attribute of the table set to a planted value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    rules = compile_profile(DeidPolicy.default()).rules
    planted: dict[int, Any] = {}
    for index, row in enumerate(load_profile_table().single_tag_rows()):
        tag = int(row.tag, 16)
        if tag >> 16 in (0x0000, 0x0002) or tag in (0x00100010, 0x00100020):
            continue
        action = rules[tag].action
        if row.vr == "SQ":
            value: Any = Sequence([nested_item(index)])
        elif action is Action.CLEAN_TEXT and row.vr in ("CS", "AE", "SH"):
            value = "BY PHIDOE"
        elif action is Action.CLEAN_TEXT:
            value = "by PHIJANE PHIDOE"
        elif action in KEPT and row.vr in ("CS", "SH", "LO", "DS", "AS", "US"):
            value = {"CS": "F", "SH": "KEPT", "LO": "KEPT", "DS": "1.5", "AS": "042Y", "US": 1}[
                row.vr
            ]
        else:
            value = planted_value(row.vr, index, tag)
        if value is None:
            continue
        dataset.add_new(tag, row.vr, value)
        planted[tag] = value
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.ManufacturerModelName = "RHAPSODE for PHIDOE"  # free text outside the table
    dataset.ImageComments = f"PHIDOE PHIJANE MRN {PATIENT_ID} tolerated well"
    block = dataset.private_block(0x0011, "PHI CREATOR", create=True)
    block.add_new(0x01, "LO", "PHIPRIVATE001")
    block.add_new(0x02, "PN", "PHIPRIVNAME^X")
    block.add_new(0x03, "SQ", Sequence([nested_item(999)]))
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset, planted


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def planted() -> tuple[bytes, dict[int, Any]]:
    dataset, values = planted_dataset()
    return encode(dataset), values


def test_every_table_attribute_was_planted(planted: tuple[bytes, dict[int, Any]]) -> None:
    _, values = planted
    single = [r for r in load_profile_table().single_tag_rows() if not r.tag.startswith("000")]
    assert len(values) >= len(single) - 2  # all but PatientName/PatientID, planted separately


def test_no_planted_phi_survives(planted: tuple[bytes, dict[int, Any]]) -> None:
    data, values = planted
    result = deidentify_dicom(data, KEY, DeidPolicy.default())
    output = result.data
    assert b"PHI" not in output and b"phi0" not in output
    for tag, value in values.items():
        if isinstance(value, str) and value.startswith("1.2.999."):  # planted UIDs
            assert value.encode() not in output, f"{tag:08X}"
        if isinstance(value, str) and len(value) >= 8 and value[:8].isdigit():  # dates
            assert value[:8].encode() not in output, f"{tag:08X}"
    assert scan_for_phi([("out.dcm", output)], result.identifiers) == []
    identifiers = {i.casefold() for i in result.identifiers}
    for expected in ("PHIDOE", "PHIJANE", PATIENT_ID, "PHIPRIVNAME", "PHINESTED999^DEEP"):
        assert expected.casefold() in identifiers, expected


def test_retained_and_cleaned_values(planted: tuple[bytes, dict[int, Any]]) -> None:
    data, _ = planted
    output = pydicom.dcmread(io.BytesIO(deidentify_dicom(data, KEY, DeidPolicy.default()).data))
    assert output.PatientSex == "F" and output.PatientAge == "042Y"  # patient characteristics
    assert output.StudyTime == "101010"  # whole-day shifts keep the time of day
    assert output.ManufacturerModelName == "RHAPSODE for"
    assert output.StudyDescription == "by"
    assert output.Occupation == "BY"
    assert "ImageComments" not in output  # an MRN-like residue: cleaning not assured -> X
    assert len(output.ReferencedImageSequence) == 1
    item = output.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID.startswith("2.25.")
    assert item.ProcedureCodeSequence[0].PatientName == ""  # another patient's name: emptied


def test_scanner_names_the_element_path_of_a_leak(planted: tuple[bytes, dict[int, Any]]) -> None:
    data, _ = planted
    dataset = pydicom.dcmread(io.BytesIO(data))
    identifiers = collect_identifiers(dataset)
    hits = scan_for_phi([("in/PHIDOE.dcm", data)], identifiers)
    locations = {hit.location for hit in hits}
    assert "path" in locations
    assert "(0010,0010)" in locations
    assert "(0008,1140)[0].(0008,1032)[0].(0010,0010)" in locations
    private_name = dataset.private_block(0x0011, "PHI CREATOR").get_tag(0x02)
    assert f"(0011,{private_name & 0xFFFF:04X})" in locations
    assert any(hit.identifier_sha256 == identifier_digest("PHIDOE") for hit in hits)


def test_scanner_finds_raw_bytes_outside_any_element() -> None:
    blob = b"\x00" * 100 + b"PHIMRN12345" + b"\xff" * 50
    hits = scan_for_phi([("tile.bin", blob)], {PATIENT_ID})
    assert [hit.location for hit in hits] == ["bytes@100"]
    assert scan_for_phi([("notes.json", b'{"a": "x PHIDOE y"}')], {"PHIDOE"})[0].location == (
        "text@9"
    )


def test_short_and_numeric_tokens_are_not_searched() -> None:
    assert MIN_ALPHA_TOKEN_CHARS == 3
    matcher = IdentifierMatcher({"M", "F", "12", "1.0", "120", "1234", "Li"})
    assert not matcher.tokens
    hits = scan_for_phi([("x.txt", b"M F 12 1.0 120 1234 Li")], {"M", "12", "1234", "Li"})
    assert hits == []


def test_tokens_match_whole_words_only() -> None:
    matcher = IdentifierMatcher({"ANN", "20040119"})
    assert not matcher.mentions("PLANNED SCAN")
    assert matcher.mentions("seen by Ann today")
    assert not matcher.mentions("1.2.3.20040119.5")
    assert matcher.mentions("study of 20040119.")


def test_slide_file_scan_finds_tags_and_raw_bytes_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bounded-memory slide scan: a tag value, and a token split by a chunk boundary."""
    import numpy as np
    import tifffile

    from tasks.deid import phiscan

    path = tmp_path / "slide.tiff"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), description="scanned for WELLINGTON^ADA")
    data = path.read_bytes()
    token = b"MRN77553311"
    cut = len(data) // 2
    path.write_bytes(data[:cut] + token + data[cut:])
    monkeypatch.setattr(phiscan, "SCAN_CHUNK_BYTES", cut + 4)  # the chunk ends inside the token
    hits = phiscan.scan_slide_file("slides/x.tiff", path, {"WELLINGTON", "MRN77553311"})
    locations = sorted(h.location for h in hits)
    assert any(loc.startswith("page[0].ImageDescription") for loc in locations)
    assert f"bytes@{cut}" in locations
    assert phiscan.scan_slide_file("slides/x.tiff", path, {"NOBODYHERE"}) == []

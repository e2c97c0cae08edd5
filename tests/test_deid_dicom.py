"""De-identification of the real DICOM files that pydicom ships."""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from mira.errors import DeidentificationError, InvalidInput
from tasks.deid import (
    DeidPolicy,
    Region,
    ScrubRule,
    deidentify_dicom,
    pseudonymize_uid,
    scan_for_phi,
)

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SCRUB_EVERYTHING = dataclasses.replace(
    DeidPolicy.default(), scrub_rules=(ScrubRule("*", (Region(0.0, 0.0, 0.1, 1.0),)),)
)
# Files pydicom reads whose pixels no installed decoder can decode: refused when scrubbing.
UNDECODABLE = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}
# Files that end inside their Pixel Data: refused as invalid input (bad data is quarantined).
TRUNCATED = {"MR_truncated.dcm"}


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def readable_dicom_files() -> Iterator[Path]:
    """Every bundled file that pydicom can read as a dataset with at least one element."""
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            dataset = read(path.read_bytes())
        except Exception:
            continue
        if len(dataset):
            yield path


CORPUS = list(readable_dicom_files())


def is_composite_instance(dataset: Dataset) -> bool:
    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    directory = "DirectoryRecordSequence" in dataset
    return not directory and all(str(dataset.get(k, "") or "").strip() for k in keywords)


def test_corpus_is_large() -> None:
    assert len(CORPUS) > 80


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_every_bundled_file_is_deidentified_or_refused_for_a_stated_reason(path: Path) -> None:
    data = path.read_bytes()
    original = read(data)
    if not is_composite_instance(original):
        with pytest.raises(InvalidInput):
            deidentify_dicom(data, KEY, SCRUB_EVERYTHING)
        return
    if path.name in TRUNCATED:
        with pytest.raises(InvalidInput, match="truncated file"):
            deidentify_dicom(data, KEY, SCRUB_EVERYTHING)
        return
    if path.name in UNDECODABLE:
        with pytest.raises(DeidentificationError):
            deidentify_dicom(data, KEY, SCRUB_EVERYTHING)
        return
    result = deidentify_dicom(data, KEY, SCRUB_EVERYTHING)
    output = pydicom.dcmread(io.BytesIO(result.data))
    assert output.PatientIdentityRemoved == "YES"
    assert output.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113100" in {item.CodeValue for item in output.DeidentificationMethodCodeSequence}
    assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
    assert output.SOPInstanceUID == result.sop_instance_uid != original.SOPInstanceUID
    assert output.StudyInstanceUID == result.study_uid != original.StudyInstanceUID
    assert output.PatientID == result.patient_id
    assert not any(element.tag.is_private for element in output.iterall())
    assert (
        scan_for_phi(
            [(f"{result.patient_id}/{result.sop_instance_uid}.dcm", result.data)],
            result.identifiers,
        )
        == []
    )
    if "PixelData" in original and not result.scrubbed_pixels:
        assert output.PixelData == original.PixelData
        assert output.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    if result.scrubbed_pixels:
        assert output.BurnedInAnnotation == "NO"
        assert "113101" in {item.CodeValue for item in output.DeidentificationMethodCodeSequence}


def test_without_ocr_secondary_captures_need_a_region_rule() -> None:
    data = (
        (TEST_FILES / "SC_rgb.dcm").read_bytes()
        if (TEST_FILES / "SC_rgb.dcm").exists()
        else (TEST_FILES / "SC_rgb_rle.dcm").read_bytes()
    )
    with pytest.raises(DeidentificationError, match="no scrub rule"):
        deidentify_dicom(data, KEY, dataclasses.replace(DeidPolicy.default(), ocr=False))
    # with OCR (the default) the colour bars read as no text: published, pixels untouched
    result = deidentify_dicom(data, KEY, DeidPolicy.default())
    assert not result.scrubbed_pixels
    assert read(result.data).PixelData == read(data).PixelData


def test_untouched_pixels_stay_bit_for_bit_including_compressed() -> None:
    for name in (
        "CT_small.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
    ):
        data = (TEST_FILES / name).read_bytes()
        result = deidentify_dicom(data, KEY, DeidPolicy.default())
        assert not result.scrubbed_pixels
        assert read(result.data).PixelData == read(data).PixelData


def pixels(dataset: Dataset) -> np.ndarray:
    dataset.pixel_array_options(as_rgb=True)
    return np.asarray(dataset.pixel_array)


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "examples_ybr_color.dcm"])
def test_ultrasound_banner_is_blanked_and_the_rest_kept(name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    result = deidentify_dicom(data, KEY, dataclasses.replace(DeidPolicy.default(), ocr=False))
    assert result.scrubbed_pixels
    before, after = pixels(read(data)), pixels(read(result.data))
    assert before.shape == after.shape
    rows = (
        before.shape[-3] if before.ndim == 4 else before.shape[-3 if before.shape[-1] == 3 else -2]
    )
    banner = -(-rows // 10)
    frames_before = before.reshape((-1, *before.shape[-3:]))
    frames_after = after.reshape((-1, *after.shape[-3:]))
    assert frames_before[:, :banner].any()
    assert not frames_after[:, :banner].any()
    assert np.array_equal(frames_after[:, banner:], frames_before[:, banner:])
    output = read(result.data)
    assert output.BurnedInAnnotation == "NO"
    assert output.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_burned_in_annotation_yes_without_rule_is_refused_never_passed_through() -> None:
    dataset = read((TEST_FILES / "CT_small.dcm").read_bytes())
    dataset.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    no_ocr = dataclasses.replace(DeidPolicy.default(), ocr=False)
    with pytest.raises(DeidentificationError):
        deidentify_dicom(buffer.getvalue(), KEY, no_ocr)
    ct_rule = dataclasses.replace(
        no_ocr, scrub_rules=(ScrubRule("CT", (Region(0, 0, 10, 128, "pixel"),)),)
    )
    result = deidentify_dicom(buffer.getvalue(), KEY, ct_rule)
    assert result.scrubbed_pixels
    assert not read(result.data).pixel_array[:10].any()


def test_ultrasound_without_any_rule_is_refused_when_ocr_is_off() -> None:
    no_rules = dataclasses.replace(DeidPolicy.default(), scrub_rules=(), ocr=False)
    with pytest.raises(DeidentificationError):
        deidentify_dicom((TEST_FILES / "examples_rgb_color.dcm").read_bytes(), KEY, no_rules)


BATCH_FILES = sorted((TEST_FILES / "dicomdirtests").rglob("[0-9]*"))
BATCH_FILES = [p for p in BATCH_FILES if p.is_file()]


def deidentify_batch(paths: list[Path], key: bytes) -> dict[Path, tuple[Dataset, Dataset]]:
    out = {}
    for path in paths:
        data = path.read_bytes()
        out[path] = (read(data), read(deidentify_dicom(data, key, DeidPolicy.default()).data))
    return out


def as_date(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def test_two_batches_agree_on_pseudonyms_uids_and_date_shifts() -> None:
    assert len(BATCH_FILES) > 20
    first = deidentify_batch(BATCH_FILES[::2], KEY)
    second = deidentify_batch(BATCH_FILES[1::2], KEY)
    pairs = list(first.values()) + list(second.values())
    mapping: dict[tuple[str, str], str] = {}
    shifts: dict[str, set[int]] = {}
    for original, output in pairs:
        for keyword in (
            "PatientID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "FrameOfReferenceUID",
        ):
            if keyword in original:
                key = (keyword, str(original.get(keyword)))
                assert mapping.setdefault(key, str(output.get(keyword))) == str(output.get(keyword))
        for keyword in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"):
            if original.get(keyword):
                delta = (as_date(output.get(keyword)) - as_date(original.get(keyword))).days
                shifts.setdefault(str(original.PatientID), set()).add(delta)
    assert len({v for (k, _), v in mapping.items() if k == "PatientID"}) == 2
    for patient, deltas in shifts.items():
        assert len(deltas) == 1, (patient, deltas)
        assert -365 <= deltas.pop() <= -1


def test_different_keys_give_unrelated_pseudonyms() -> None:
    paths = BATCH_FILES[:4]
    first, second = deidentify_batch(paths, KEY), deidentify_batch(paths, OTHER_KEY)
    for path in paths:
        a, b = first[path][1], second[path][1]
        assert a.PatientID != b.PatientID
        assert a.StudyInstanceUID != b.StudyInstanceUID
        assert a.SOPInstanceUID != b.SOPInstanceUID


def test_reruns_are_byte_identical() -> None:
    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    assert (
        deidentify_dicom(data, KEY, DeidPolicy.default()).data
        == deidentify_dicom(data, KEY, DeidPolicy.default()).data
    )


def test_structured_report_text_is_cleaned_and_structure_kept() -> None:
    dataset = read((TEST_FILES / "test-SR.dcm").read_bytes())
    dataset.PatientName = "Jekyll^Henry"
    dataset.PatientID = "MRN-77341"
    item = dataset.ContentSequence[0]
    item.ValueType = "TEXT"
    item.TextValue = "Seen by Henry Jekyll, record MRN-77341; lesion stable"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    result = deidentify_dicom(buffer.getvalue(), KEY, DeidPolicy.default())
    output = read(result.data)
    assert len(output.ContentSequence) == len(dataset.ContentSequence)
    text = output.ContentSequence[0].TextValue
    assert "Jekyll" not in text and "77341" not in text and "lesion stable" in text
    assert b"Jekyll" not in result.data and b"MRN-77341" not in result.data


def referenced_uids(dataset: Dataset) -> set[str]:
    return {
        str(element.value)
        for element in dataset.iterall()
        if element.keyword in ("ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID")
    }


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm"])
def test_referenced_uids_are_remapped_consistently_at_depth(name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    original, output = read(data), read(deidentify_dicom(data, KEY, DeidPolicy.default()).data)
    before = referenced_uids(original)
    assert before
    assert referenced_uids(output) == {pseudonymize_uid(uid, KEY) for uid in before}


def test_safe_private_list_keeps_only_the_named_private_attributes() -> None:
    from tasks.deid import PrivateTag

    policy = dataclasses.replace(
        DeidPolicy.default(), safe_private=(PrivateTag.parse("0043,GEMS_PARM_01,10"),)
    )
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    output = read(deidentify_dicom(data, KEY, policy).data)
    private = {int(element.tag) for element in output.iterall() if element.tag.is_private}
    assert private == {0x00430010, 0x00431010}
    assert output[0x00431010].value == 400
    assert "113111" in {item.CodeValue for item in output.DeidentificationMethodCodeSequence}


def test_configured_uid_root_is_used() -> None:
    root = "1.2.826.0.1.3680043.10.999"
    policy = dataclasses.replace(DeidPolicy.default(), uid_root=root)
    result = deidentify_dicom((TEST_FILES / "MR_small.dcm").read_bytes(), KEY, policy)
    for uid in (result.study_uid, result.series_uid, result.sop_instance_uid):
        assert uid.startswith(root + ".") and len(uid) <= 64


def test_big_endian_ultrasound_is_scrubbed_into_little_endian() -> None:
    data = (TEST_FILES / "ExplVR_BigEnd.dcm").read_bytes()
    result = deidentify_dicom(data, KEY, DeidPolicy.default())
    before, after = read(data), read(result.data)
    assert after.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    rows = int(before.Rows)
    banner = -(-rows // 10)
    a, b = np.asarray(before.pixel_array), np.asarray(after.pixel_array)
    assert a[:banner].any() and not b[:banner].any()
    assert np.array_equal(a[banner:], b[banner:])
    assert after.Rows == before.Rows and after.Columns == before.Columns

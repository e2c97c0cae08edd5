"""``mira sample-data``: the demo drop zone is deterministic, realistic and full of planted PHI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.errors import InvalidDicomError

from mira.errors import InvalidInput
from tasks.sample.generate import (
    MIXED_BATCH,
    PATHOLOGY_BATCH,
    RADIOLOGY_BATCH,
    UPLOADING_BATCH,
    US_BANNER_ROWS,
    SampleDataSummary,
    generate_sample_data,
    render_ultrasound,
)
from tasks.sample.identities import PRIVATE_CREATOR, make_patient

SLIDE_SIZE = 2048
SEED = 7


@pytest.fixture(scope="module")
def progress_log() -> list[tuple[str, int, int]]:
    return []


@pytest.fixture(scope="module")
def sample(
    tmp_path_factory: pytest.TempPathFactory, progress_log: list[tuple[str, int, int]]
) -> SampleDataSummary:
    """One small drop zone shared by the module: 3 patients, one 2,048 px slide."""
    root = tmp_path_factory.mktemp("sample") / "dropzone"
    return generate_sample_data(
        root,
        patients=3,
        slides=1,
        slide_size=SLIDE_SIZE,
        seed=SEED,
        progress=lambda step, done, total: progress_log.append((step, done, total)),
    )


@pytest.fixture(scope="module")
def truth(sample: SampleDataSummary) -> dict[str, Any]:
    return dict(json.loads(sample.phi_truth.read_text()))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _ct_slices(sample: SampleDataSummary) -> list[pydicom.Dataset]:
    patient = make_patient(0, SEED)
    folder = sample.root / RADIOLOGY_BATCH / patient.folder / f"{patient.studies['CT'].date}_CT"
    slices = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    return sorted(slices, key=lambda ds: int(ds.InstanceNumber))


def test_rerun_writes_byte_identical_files(sample: SampleDataSummary, tmp_path: Path) -> None:
    again = generate_sample_data(
        tmp_path / "again", patients=3, slides=1, slide_size=SLIDE_SIZE, seed=SEED
    )
    first, second = _files(sample.root), _files(again.root)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_identities() -> None:
    assert make_patient(0, SEED).patient_id != make_patient(0, SEED + 1).patient_id
    assert len({make_patient(i, SEED).name for i in range(144)}) == 144


def test_batches_have_their_markers(sample: SampleDataSummary) -> None:
    root = sample.root
    assert sample.batches == (RADIOLOGY_BATCH, PATHOLOGY_BATCH, MIXED_BATCH, UPLOADING_BATCH)
    assert sorted(p.name for p in root.iterdir()) == sorted([*sample.batches, "_sample_phi.json"])
    for batch in (RADIOLOGY_BATCH, MIXED_BATCH):
        assert (root / batch / "_READY").read_bytes() == b""
    uploading = {p.name for p in (root / UPLOADING_BATCH).rglob("*")}
    assert "_READY" not in uploading and "manifest.json" not in uploading
    assert list((root / UPLOADING_BATCH).rglob("*.dcm"))


def test_manifest_lists_every_pathology_file_with_hash_and_size(sample: SampleDataSummary) -> None:
    batch = sample.root / PATHOLOGY_BATCH
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["batch"] == PATHOLOGY_BATCH
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.relative_to(batch).as_posix() for p in batch.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"manifest.json"}
    for path, entry in listed.items():
        data = (batch / path).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_each_slide_is_linked_to_its_patients_dicom_id(tmp_path: Path) -> None:
    """The manifest's patient_id of every slide is the PatientID its patient's CT carries."""
    sample = generate_sample_data(tmp_path / "dz", patients=2, slides=3, slide_size=1024)
    batch = sample.root / PATHOLOGY_BATCH
    links = {
        entry["path"]: entry["patient_id"]
        for entry in json.loads((batch / "manifest.json").read_text())["files"]
    }
    truth = json.loads(sample.phi_truth.read_text())["patients"]
    owners = {
        slide["path"].removeprefix(f"{PATHOLOGY_BATCH}/"): patient["patient_name"]
        for patient in truth
        for slide in patient["slides"]
    }
    assert set(links) == set(owners) and len(links) == 3
    ct_ids = {
        str(ds.PatientName): str(ds.PatientID)
        for ds in (
            pydicom.dcmread(path, stop_before_pixels=True)
            for path in (sample.root / RADIOLOGY_BATCH).rglob("IM0001.dcm")
        )
    }
    assert {path: ct_ids[owners[path]] for path in links} == links


def test_ct_series_has_consistent_geometry(sample: SampleDataSummary) -> None:
    slices = _ct_slices(sample)
    assert len(slices) >= 20
    assert [int(ds.InstanceNumber) for ds in slices] == list(range(1, len(slices) + 1))
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[keyword].value for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == len(slices)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in slices)
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([ds.ImagePositionPatient for ds in slices], float)
    steps = np.diff(positions, axis=0)
    expected = float(slices[0].SliceThickness) * normal
    np.testing.assert_allclose(steps, np.tile(expected, (len(steps), 1)), atol=1e-3)
    np.testing.assert_allclose([float(ds.SliceLocation) for ds in slices], positions @ normal)


def test_ct_slices_differ_but_keep_the_source_pixel_format(sample: SampleDataSummary) -> None:
    source = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    pixels = [ds.pixel_array for ds in _ct_slices(sample)[:3]]
    assert all(p.dtype == source.pixel_array.dtype for p in pixels)
    assert all(p.shape == source.pixel_array.shape for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1])


def test_mr_series_belongs_to_the_patient(sample: SampleDataSummary) -> None:
    patient = make_patient(0, SEED)
    study = patient.studies["MR"]
    folder = sample.root / RADIOLOGY_BATCH / patient.folder / f"{study.date}_MR"
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    assert len(slices) >= 3
    assert {ds.Modality for ds in slices} == {"MR"}
    assert {ds.PatientID for ds in slices} == {patient.patient_id}
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1


def test_ultrasound_has_identity_burned_into_pixels(sample: SampleDataSummary) -> None:
    patient = make_patient(0, SEED)
    path = sample.root / MIXED_BATCH / patient.folder / f"{patient.studies['US'].date}_US"
    ds = pydicom.dcmread(path / "IM0001.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
    assert (ds.Modality, ds.BurnedInAnnotation) == ("US", "YES")
    assert ds.pixel_array.shape == (480, 640, 3)
    blank = render_ultrasound(patient, SEED, burn_text=False)
    banner, blank_banner = ds.pixel_array[:US_BANNER_ROWS], blank[:US_BANNER_ROWS]
    assert np.array_equal(ds.pixel_array, render_ultrasound(patient, SEED))
    assert np.count_nonzero(np.any(banner != blank_banner, axis=-1)) > 500
    assert np.array_equal(ds.pixel_array[US_BANNER_ROWS:], blank[US_BANNER_ROWS:])


def test_phi_is_planted_in_private_tags_and_nested_sequences(
    sample: SampleDataSummary, truth: dict[str, Any]
) -> None:
    ds = _ct_slices(sample)[0]
    known = truth["patients"][0]["identifiers"]
    block = ds.private_block(0x0009, PRIVATE_CREATOR)
    assert block[0x01].value == truth["patients"][0]["patient_name"]
    assert block[0x02].value == truth["patients"][0]["patient_id"]
    assert block[0x03].value in known["dates"]
    assert block[0x06].value[0].PatientName == truth["patients"][0]["patient_name"]
    request = ds.RequestAttributesSequence[0]
    assert request.AccessionNumber in known["ids"] and request.RequestedProcedureID in known["ids"]
    assert request.ReferencedStudySequence[0].ReferencedSOPInstanceUID == ds.StudyInstanceUID
    assert ds.StudyInstanceUID in known["uids"]
    observer = ds.AcquisitionContextSequence[0].ContentSequence[0].PersonName
    assert str(observer) in known["names"]
    assert {item.PatientID for item in ds.OtherPatientIDsSequence} <= set(known["ids"])
    for keyword in ("PatientMotherBirthName", "MilitaryRank", "IssuerOfPatientID", "EthnicGroup"):
        assert str(ds[keyword].value)
    assert ds.PatientID in ds.SeriesDescription and str(ds.PatientName) in ds.StudyDescription
    assert ds.PatientName.given_name in ds.ImageComments and ds.PatientID in ds.ImageComments


def test_truth_identifiers_occur_in_the_files(
    sample: SampleDataSummary, truth: dict[str, Any]
) -> None:
    outputs = _files(sample.root)
    del outputs["_sample_phi.json"]
    everything = b"".join(path.encode() + data for path, data in outputs.items())
    for patient in truth["patients"]:
        planted = [value for values in patient["identifiers"].values() for value in values]
        missing = [value for value in planted if value.encode() not in everything]
        assert all(re.fullmatch(r"\d{4}/\d{2}/\d{2}", value) for value in missing)  # pixels only


def test_slide_is_an_aperio_svs_pyramid(sample: SampleDataSummary, truth: dict[str, Any]) -> None:
    slide = truth["patients"][0]["slides"][0]
    with tifffile.TiffFile(sample.root / slide["path"]) as tif:
        assert tif.is_svs
        names = [series.name for series in tif.series]
        assert names == ["Baseline", "Thumbnail", "Label", "Macro"]
        baseline = tif.series[0]
        assert baseline.shape[:2] == (SLIDE_SIZE, SLIDE_SIZE) and len(baseline.levels) >= 3
        pages = [page for page in tif.pages if isinstance(page, tifffile.TiffPage)]
        assert len(pages) == len(tif.pages)
        level0, thumbnail, label, macro = pages[0], pages[1], pages[-2], pages[-1]
        assert level0.is_tiled and level0.tilewidth == 256
        assert level0.compression == tifffile.COMPRESSION.JPEG
        assert not thumbnail.is_tiled
        description = level0.description
        assert f"Filename = {slide['filename']}" in description
        assert f"Date = {slide['date']}" in description and f"User = {slide['user']}" in description
        assert label.description.splitlines()[1].startswith("label ")
        assert macro.description.splitlines()[1].startswith("macro ")
        assert all("DateTime" not in page.tags for page in pages)
        overview = baseline.levels[-1].asarray().astype(int)
    pink = (overview[..., 0] - overview[..., 1] > 30).mean()
    background = (overview.min(axis=-1) > 225).mean()
    assert pink > 0.05 and background > 0.2


def test_progress_reports_dicom_and_slide_work(
    sample: SampleDataSummary, progress_log: list[tuple[str, int, int]]
) -> None:
    steps = {step for step, _, _ in progress_log}
    assert steps == {"DICOM", "sample slide"}, "no step names a file (names may hold a patient's)"
    assert all(done <= total for _, done, total in progress_log)
    slide_reports = [(done, total) for step, done, total in progress_log if step == "sample slide"]
    assert slide_reports[-1][0] == slide_reports[-1][1]


def test_broken_files_are_really_broken(sample: SampleDataSummary) -> None:
    assert sample.broken_files == 3
    mixed = sample.root / MIXED_BATCH
    empty = [p for p in mixed.rglob("*.dcm") if p.stat().st_size == 0]
    assert len(empty) == 1
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(empty[0])
    note = next(mixed.rglob("*.txt"))
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(note)
    truncated = [p for p in mixed.rglob("*_MR/*.dcm")]
    assert len(truncated) == 1
    with pytest.raises(ValueError, match="pixel data"):
        _ = pydicom.dcmread(truncated[0]).pixel_array


def test_size_and_count_options_are_respected(tmp_path: Path) -> None:
    summary = generate_sample_data(tmp_path / "small", patients=1, slides=2, slide_size=1024)
    slides = sorted((summary.root / PATHOLOGY_BATCH).rglob("*.svs"))
    assert summary.slides == len(slides) == 2
    for path in slides:
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].shape[:2] == (1024, 1024)
    dicom = [p for p in summary.root.rglob("*.dcm") if p.stat().st_size > 0]
    assert summary.dicom_files == len(dicom) - 1  # the truncated MR slice is not counted
    assert len(json.loads(summary.phi_truth.read_text())["patients"]) == 1


@pytest.mark.parametrize(
    "options", [{"patients": 0}, {"slides": -1}, {"slide_size": 100}, {"patients": 145}]
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        generate_sample_data(tmp_path / "out", **options)


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(InvalidInput, match="not empty"):
        generate_sample_data(tmp_path, slides=0)


def test_no_slides_means_no_pathology_batch(tmp_path: Path) -> None:
    summary = generate_sample_data(tmp_path / "dz", patients=1, slides=0)
    assert summary.slides == 0
    assert all("pathology" not in b for b in summary.batches)
    assert not any((tmp_path / "dz").glob("*pathology*"))

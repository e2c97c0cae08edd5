"""``mira sample-data``: a demo drop zone of realistic, PHI-laden imaging uploads.

Built from pydicom's bundled real files rewritten per synthetic patient
(:mod:`tasks.sample.identities`), synthetic Aperio slides (:mod:`tasks.sample.slides`), broken
files and an unfinished upload, so every pipeline stage has something to do. Each identifier
planted is listed in ``_sample_phi.json`` for leak tests. The same arguments always give
byte-identical files: UIDs, dates and pixels derive from the seed only.

Layout of ``out_dir``::

    batch-0001-radiology/<FAMILY_GIVEN>/<date>_CT|MR/IM0001.dcm ...  + _READY (empty)
    batch-0002-pathology/<FAMILY_GIVEN>/<case>_<FAMILY_GIVEN>.svs|.ndpi + manifest.json
    batch-0003-mixed/<FAMILY_GIVEN>/<date>_US/IM0001.dcm, broken files + _READY (empty)
    batch-0004-uploading/<FAMILY_GIVEN>/<date>_CT/IM0001.dcm ...     no marker: still uploading
    _sample_phi.json

``manifest.json`` is ``{"batch": name, "files": [{"path": relative posix path, "sha256": hex,
"size": int, "patient_id": str}]}``: each slide is linked to its patient by the PatientID of
that patient's DICOM files, so splits keep a patient's slides with their CT, MR and US. ``_sample_phi.json`` is ``{"seed": int, "patients": [{"patient_name": str,
"patient_id": str, "identifiers": {category: [str, ...]}, "slides": [{field: str}]}]}`` with the
categories names, ids, dates, times, uids, addresses, phones, institutions and other.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from mira.errors import InvalidInput
from tasks.sample.identities import (
    NAME_PAIRS,
    SyntheticPatient,
    SyntheticStudy,
    derive_uid,
    make_patient,
    plant_identity,
)
from tasks.sample.slides import (
    SlideIdentity,
    level_sizes,
    slide_identity,
    slide_path,
    write_pathology_batch,
)

Progress = Callable[[str, int, int], None]

RADIOLOGY_BATCH = "batch-0001-radiology"
PATHOLOGY_BATCH = "batch-0002-pathology"
MIXED_BATCH = "batch-0003-mixed"
UPLOADING_BATCH = "batch-0004-uploading"
BATCHES = (RADIOLOGY_BATCH, PATHOLOGY_BATCH, MIXED_BATCH, UPLOADING_BATCH)
READY_MARKER = "_READY"
PHI_TRUTH = "_sample_phi.json"
CT_SLICES = 24
MR_SLICES = 4
UPLOADED_SLICES = 6
BROKEN_FILES = 3
US_SIZE = (640, 480)
US_BANNER_ROWS = 56
PIXEL_DATA = 0x7FE00010
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclass(frozen=True)
class SampleDataSummary:
    """What ``generate_sample_data`` wrote: the drop zone, its batches and what they hold.

    ``dicom_files`` counts the valid DICOM files of every batch, the uploading one included;
    ``broken_files`` the truncated, empty and non-DICOM files planted in the mixed batch.
    """

    root: Path
    batches: tuple[str, ...]
    dicom_files: int
    slides: int
    broken_files: int
    phi_truth: Path


@dataclass(frozen=True)
class SeriesPlan:
    """One image series to derive from a bundled pydicom file."""

    source: str
    study: SyntheticStudy
    number: int
    description: str
    slices: int


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(derive_uid(0, "mira sample-data"))
    meta.ImplementationVersionName = "MIRA_SAMPLE_1"
    return meta


def dicom_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (explicit VR little endian)."""
    ds.file_meta = _file_meta(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@cache
def _bundled_bytes(name: str) -> bytes:
    return (TEST_FILES / name).read_bytes()


@cache
def _bundled(name: str) -> Dataset:
    """A file bundled with pydicom, parsed once; callers must not change it."""
    return pydicom.dcmread(io.BytesIO(_bundled_bytes(name)))


def _fresh_copy(name: str) -> Dataset:
    """A private, changeable copy of a bundled file (re-parsing beats ``deepcopy`` 3:1)."""
    return pydicom.dcmread(io.BytesIO(_bundled_bytes(name)))


def series_uids(seed: int, study: SyntheticStudy, number: int, count: int) -> tuple[str, ...]:
    """Series UID, frame-of-reference UID, then one SOP instance UID per image."""
    names = ["series", "frame-of-reference"] + [f"instance-{k}" for k in range(1, count + 1)]
    return tuple(derive_uid(seed, study.uid, number, name) for name in names)


def _vary_pixels(
    base: NDArray[np.integer], rng: np.random.Generator, phase: float
) -> NDArray[np.integer]:
    """A neighbouring slice: the anatomy a little larger or smaller, a moving blob, fresh noise."""
    h, w = base.shape
    scale = 1.0 + 0.08 * np.sin(np.pi * phase)
    rows = np.clip(((np.arange(h) - h / 2) / scale + h / 2).astype(int), 0, h - 1)
    cols = np.clip(((np.arange(w) - w / 2) / scale + w / 2).astype(int), 0, w - 1)
    out = base[rows][:, cols].astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out += 60.0 * np.exp(-((yy - 0.3 - 0.4 * phase) ** 2 + (xx - 0.55) ** 2) / 0.004)
    out += rng.normal(0.0, 6.0, base.shape)
    info = np.iinfo(base.dtype)
    varied = np.clip(np.rint(out), max(info.min, int(base.min())), info.max).astype(base.dtype)
    return np.where(base[rows][:, cols] == base.min(), base[rows][:, cols], varied)


def volume_series(plan: SeriesPlan, patient: SyntheticPatient, seed: int) -> Iterator[Dataset]:
    """The slices of one CT/MR series: shared UIDs, positions stepping along the slice normal."""
    source = _bundled(plan.source)
    uids = series_uids(seed, plan.study, plan.number, plan.slices)
    orientation = np.array([float(v) for v in source.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    start = np.array([float(v) for v in source.ImagePositionPatient])
    rng = np.random.default_rng(_numeric_seed(seed, plan.study.uid, plan.number))
    for k in range(plan.slices):
        ds = _fresh_copy(plan.source)
        position = start + k * float(source.SliceThickness) * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{float(position @ normal):.4f}"
        ds.SpacingBetweenSlices = source.SliceThickness
        ds.InstanceNumber, ds.SeriesNumber = k + 1, plan.number
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID = *uids[:2], uids[2 + k]
        ds.PixelData = _vary_pixels(source.pixel_array, rng, k / max(plan.slices - 1, 1)).tobytes()
        plant_identity(ds, patient, plan.study, plan.description)
        ds.pop((0xFFFC, 0xFFFC), None)
        yield ds


def _numeric_seed(seed: int, *parts: object) -> int:
    """A non-negative 64-bit seed for numpy, stable for any (even negative) user seed."""
    return int.from_bytes(hashlib.sha256(repr((seed, *parts)).encode()).digest()[:8], "big")


def _blurred(field: NDArray[np.floating], radius: float) -> NDArray[np.float64]:
    """Gaussian-blurred copy of a 0..1 field (via Pillow, which is fast and deterministic)."""
    image = Image.fromarray(np.clip(field * 255, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float64) / 255


def _b_mode(rng: np.random.Generator) -> NDArray[np.uint8]:
    """Grey B-mode echoes in a convex-probe sector: liver-like texture, two anechoic vessels."""
    width, height = US_SIZE
    yy, xx = np.mgrid[0:height, 0:width]
    radius, angle = np.hypot(yy - 40, xx - width / 2), np.arctan2(xx - width / 2, yy - 40)
    sector = (radius > US_BANNER_ROWS + 10) & (radius < height - 50) & (np.abs(angle) < 0.66)
    echogenicity = 0.5 + 5.0 * (_blurred(rng.random(yy.shape), 18) - 0.5)
    for cy, cx, ry, rx in rng.uniform((180, 220, 15, 25), (380, 420, 35, 60), (2, 4)):
        echogenicity[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] *= 0.08
    speckle = _blurred(rng.rayleigh(0.25, yy.shape), 1.0)
    echo = 255 * echogenicity * speckle / speckle.mean() * (1.1 - 0.6 * radius / height)
    return np.where(sector, np.clip(echo, 0, 255), 0).astype(np.uint8)


def render_ultrasound(
    patient: SyntheticPatient, seed: int, *, burn_text: bool = True
) -> NDArray[np.uint8]:
    """A 640x480 RGB ultrasound frame with the identity burned into its top banner."""
    grey = _b_mode(np.random.default_rng(_numeric_seed(seed, patient.patient_id, "US")))
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if burn_text:
        study = patient.studies["US"]
        draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=15)
        lines = (
            f"{patient.name}   ID: {patient.patient_id}",
            f"{patient.institution}   {burned_date(study.date)} {study.time[:2]}:{study.time[2:4]}",
        )
        for row, text in enumerate(lines):
            draw.text((10, 6 + row * 22), text, fill=(255, 236, 140), font=font)
    return np.asarray(image)


def burned_date(date: str) -> str:
    """How the ultrasound banner prints a DICOM date."""
    return f"{date[:4]}/{date[4:6]}/{date[6:]}"


def ultrasound_dataset(patient: SyntheticPatient, seed: int) -> Dataset:
    """An Ultrasound Image Storage instance with burned-in identity (BurnedInAnnotation YES).

    Header elements come from the bundled LOGIQ 700 file; group lengths are dropped and the
    encoding becomes explicit VR little endian.
    """
    source, study = _bundled("ExplVR_BigEnd.dcm"), patient.studies["US"]
    ds = Dataset()
    for element in source:
        if element.tag.element != 0 and element.tag != PIXEL_DATA:
            ds.add(copy.deepcopy(element))
    series_uid, _, sop_uid = series_uids(seed, study, 1, 1)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.Rows, ds.Columns, ds.PlanarConfiguration = US_SIZE[1], US_SIZE[0], 0
    ds.BurnedInAnnotation = "YES"
    plant_identity(ds, patient, study, "ABDOMEN GREYSCALE")
    ds.PixelData = render_ultrasound(patient, seed).tobytes()
    return ds


def series_plans(patient: SyntheticPatient, *, incidents: bool) -> dict[str, SeriesPlan]:
    """The volume series written for a patient. With ``incidents`` (the first patient) the MR has
    one slice more, the one whose upload broke, and a follow-up CT is still uploading."""
    studies, extra = patient.studies, int(incidents)
    plans = {
        "CT": SeriesPlan("CT_small.dcm", studies["CT"], 2, "AXIAL 5MM CHEST", CT_SLICES),
        "MR": SeriesPlan("MR_small.dcm", studies["MR"], 3, "AX T2 FSE", MR_SLICES + extra),
        "CT-FU": SeriesPlan(
            "CT_small.dcm", studies["CT-FU"], 2, "AXIAL 5MM CHEST", UPLOADED_SLICES
        ),
    }
    return plans if incidents else {key: plan for key, plan in plans.items() if key != "CT-FU"}


@dataclass(frozen=True)
class SampleFile:
    """One file to place in a batch; ``valid`` is False for the deliberately broken ones."""

    path: str
    data: bytes
    valid: bool = True


def _series_files(patient: SyntheticPatient, plan: SeriesPlan, seed: int) -> list[SampleFile]:
    folder = f"{patient.folder}/{plan.study.date}_{plan.study.modality}"
    return [
        SampleFile(f"{folder}/IM{ds.InstanceNumber:04d}.dcm", dicom_bytes(ds))
        for ds in volume_series(plan, patient, seed)
    ]


def _truncated(file: SampleFile, pixel_bytes: int) -> SampleFile:
    """The file cut half-way through its pixel data, as an interrupted transfer leaves it."""
    return SampleFile(file.path, file.data[: len(file.data) - pixel_bytes // 2], valid=False)


def _clinical_note(patient: SyntheticPatient) -> SampleFile:
    text = (
        f"Referral note\nPatient: {patient.given} {patient.family} ({patient.patient_id})\n"
        f"DOB: {patient.birth_date}  Phone: {patient.phone}\nAddress: {patient.address}\n"
    )
    return SampleFile(f"{patient.folder}/referral_note.txt", text.encode(), valid=False)


def dicom_batches(people: list[SyntheticPatient], seed: int) -> Iterator[tuple[str, SampleFile]]:
    """(batch, file) for the radiology, mixed and uploading batches, one patient at a time."""
    for patient in people:
        plans = series_plans(patient, incidents=patient is people[0])
        mr = _series_files(patient, plans["MR"], seed)
        for file in _series_files(patient, plans["CT"], seed) + mr[:MR_SLICES]:
            yield RADIOLOGY_BATCH, file
        folder = f"{patient.folder}/{patient.studies['US'].date}_US"
        ultrasound = dicom_bytes(ultrasound_dataset(patient, seed))
        yield MIXED_BATCH, SampleFile(f"{folder}/IM0001.dcm", ultrasound)
        if "CT-FU" in plans:
            yield MIXED_BATCH, _truncated(mr[-1], len(_bundled(plans["MR"].source).PixelData))
            yield MIXED_BATCH, _clinical_note(patient)
            yield MIXED_BATCH, SampleFile(f"{folder}/IM0002.dcm", b"", valid=False)
            for file in _series_files(patient, plans["CT-FU"], seed):
                yield UPLOADING_BATCH, file


def phi_truth(
    patient: SyntheticPatient, slides: list[SlideIdentity], seed: int, *, incidents: bool
) -> dict[str, object]:
    """Every identifier planted for one patient, by category, for leak tests to search for.

    ``dates`` also holds the ``YYYY/MM/DD`` form burned into ultrasound pixels, which only OCR
    can find; the slide's case number and name are also drawn into its label image.
    """
    plans = series_plans(patient, incidents=incidents)
    studies = [plan.study for plan in plans.values()] + [patient.studies["US"]]
    uids = [study.uid for study in studies]
    for plan in plans.values():
        uids += series_uids(seed, plan.study, plan.number, plan.slices)
    us_series, _, us_instance = series_uids(seed, patient.studies["US"], 1, 1)
    uids += [us_series, us_instance]  # no frame of reference in an ultrasound image
    identifiers = {
        "names": [
            patient.name,
            patient.folder,
            f"{patient.given} {patient.family}",
            f"{patient.family}, {patient.given}",
            patient.mother_birth_name,
            patient.referring,
            patient.performing,
            patient.operator,
        ],
        "ids": [patient.patient_id, *patient.other_ids]
        + [
            value
            for s in studies
            for value in (s.accession, s.study_id, f"RP{s.accession[1:]}", f"SPS{s.accession[1:]}")
        ]
        + [slide.case_number for slide in slides],
        "dates": [
            patient.birth_date,
            *(s.date for s in studies),
            burned_date(patient.studies["US"].date),
            *(slide.date for slide in slides),
        ],
        "times": [s.time for s in studies] + [slide.time for slide in slides],
        "uids": uids,
        "addresses": [patient.address, patient.institution_address],
        "phones": [patient.phone],
        "institutions": [patient.institution],
        "other": [patient.issuer, patient.ethnic_group, patient.military_rank],
    }
    slide_fields = [
        {"path": f"{PATHOLOGY_BATCH}/{slide_path(slide)}"}
        | {key: value for key, value in asdict(slide).items() if key != "seed"}
        for slide in slides
    ]
    return {
        "patient_name": patient.name,
        "patient_id": patient.patient_id,
        "identifiers": identifiers,
        "slides": slide_fields,
    }


def _check_options(out_dir: Path, patients: int, slides: int, slide_size: int) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput(f"{out_dir} is not empty; sample data goes into a new or empty folder")
    if not 1 <= patients <= NAME_PAIRS:
        raise InvalidInput(f"patients must be 1..{NAME_PAIRS}, not {patients}")
    if slides < 0:
        raise InvalidInput(f"slides must be 0 or more, not {slides}")
    level_sizes(slide_size)


def generate_sample_data(
    out_dir: Path,
    *,
    patients: int = 3,
    slides: int = 1,
    slide_size: int = 20_000,
    seed: int = 0,
    progress: Progress | None = None,
    ndpi_slides: int = 0,
    dicom_slides: int = 0,
) -> SampleDataSummary:
    """Write the demo drop zone into ``out_dir`` (new or empty) and the PHI ground truth beside it.

    ``ndpi_slides`` more slides are written in Hamamatsu NDPI layout (at most 4096 px a side),
    ``dicom_slides`` more as DICOM whole-slide series (VL Whole Slide Microscopy, at most 4096
    px a side, with LABEL, OVERVIEW and THUMBNAIL instances).

    ``progress(step, done, total)`` is called as patients and slide tiles are finished.
    """
    _check_options(out_dir, patients, slides, slide_size)
    if ndpi_slides < 0 or dicom_slides < 0:
        raise InvalidInput(f"ndpi_slides and dicom_slides must be 0 or more, not {ndpi_slides}")
    slides += ndpi_slides + dicom_slides
    report = progress or (lambda step, done, total: None)
    people = [make_patient(i, seed) for i in range(patients)]
    valid, broken = _write_dicom_batches(out_dir, people, seed, report)
    identities = [
        slide_identity(owner.name, owner.patient_id, owner.studies["CT"].date, index, seed)
        for index, owner in ((i, people[i % patients]) for i in range(slides))
    ]
    if identities:  # with --slides 0 there is no pathology batch at all
        write_pathology_batch(
            out_dir / PATHOLOGY_BATCH,
            identities,
            slide_size,
            report,
            ndpi=ndpi_slides,
            dicom=dicom_slides,
        )
    for batch in (RADIOLOGY_BATCH, MIXED_BATCH):
        (out_dir / batch / READY_MARKER).write_bytes(b"")
    patients_truth = [
        phi_truth(patient, identities[n::patients], seed, incidents=n == 0)
        for n, patient in enumerate(people)
    ]
    truth_path = out_dir / PHI_TRUTH
    truth_path.write_text(json.dumps({"seed": seed, "patients": patients_truth}, indent=2) + "\n")
    batches = tuple(b for b in BATCHES if slides or b != PATHOLOGY_BATCH)
    return SampleDataSummary(out_dir, batches, valid, slides, broken, truth_path)


def _write_dicom_batches(
    out_dir: Path, people: list[SyntheticPatient], seed: int, report: Progress
) -> tuple[int, int]:
    """Write the DICOM-side batches (markers come last, elsewhere); count valid and broken files."""
    counts = {True: 0, False: 0}
    total = len(people) * (CT_SLICES + MR_SLICES + 1) + BROKEN_FILES + UPLOADED_SLICES
    for batch, file in dicom_batches(people, seed):
        target = out_dir / batch / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        counts[file.valid] += 1
        report("DICOM", counts[True] + counts[False], total)
    return counts[True], counts[False]

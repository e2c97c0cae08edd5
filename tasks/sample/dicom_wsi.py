"""A synthetic slide as a scanner's DICOM export: a VL Whole Slide Microscopy series.

The same painter, label and photographs as the SVS samples, written the way DICOM scanners and
converters lay a slide out: one instance per pyramid level (TILED_FULL, 256 px JPEG frames in
YBR_FULL_422), plus LABEL and OVERVIEW images (which show the paper label, with the patient's name
and case number) and a THUMBNAIL (tissue only). The header carries the patient module of the
slide's owner (the PatientID of their DICOM files), the case number as accession number and
container identifier, and the scan date. Frames are encoded and written one at a time (the file
is streamed after its header), so a large level never sits in memory.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from tasks.sample.slides import (
    THUMBNAIL_MAX,
    TILE,
    SlideIdentity,
    SlidePainter,
    label_image,
    macro_image,
    overview_image,
)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_MAX_SIZE = 4096  # sample DICOM slide side at most: keeps the demo's encoding short
DICOM_MPP = 0.25
JPEG_QUALITY = 80
UNDEFINED_LENGTH = 0xFFFFFFFF


def write_sample_dicom_wsi(
    folder: Path, slide: SlideIdentity, slide_size: int, progress: Callable[[int, int], None]
) -> list[Path]:
    """Write the series into ``folder``: ``level-<n>.dcm`` per level, then ``label.dcm``,
    ``overview.dcm`` and ``thumbnail.dcm``. ``progress(done, total)`` counts frames written,
    a row at a time."""
    size = min(slide_size, DICOM_MAX_SIZE)
    painter = SlidePainter(size, slide.seed)
    total = sum((-(-level_size // TILE)) ** 2 for level_size in painter.sizes)
    done = 0

    def advance(frames: int) -> None:
        nonlocal done
        done += frames
        progress(done, total)

    folder.mkdir(parents=True, exist_ok=True)
    uids = _SeriesUids(slide)
    paths = []
    for level, level_size in enumerate(painter.sizes):
        spacing_mm = DICOM_MPP * (size / level_size) / 1000.0
        header = _header(slide, uids, "VOLUME", level_size, TILE, spacing_mm, level)
        frames = _level_frames(painter, level, advance)
        paths.append(_write(folder / f"level-{level}.dcm", header, frames))
    overview = overview_image(painter, min(THUMBNAIL_MAX, size // 3))
    label = label_image(slide)
    for name, picture in (
        ("LABEL", label),
        ("OVERVIEW", macro_image(overview, label)),
        ("THUMBNAIL", overview),
    ):
        pixels = np.asarray(picture.convert("RGB"))
        header = _single_frame_header(slide, uids, name, pixels, size)
        paths.append(_write(folder / f"{name.lower()}.dcm", header, [_encode(pixels)]))
    return paths


class _SeriesUids:
    """The slide's UIDs, derived from its seed: the same seed writes the same series."""

    def __init__(self, slide: SlideIdentity) -> None:
        self._seed = f"mira-sample-dicom-wsi:{slide.seed}"
        self.study = self.uid("study")
        self.series = self.uid("series")
        self.frame_of_reference = self.uid("frame-of-reference")

    def uid(self, name: str) -> UID:
        return generate_uid(entropy_srcs=[self._seed, name])


def _level_frames(
    painter: SlidePainter, level: int, progress: Callable[[int], None]
) -> Iterator[bytes]:
    count = -(-painter.sizes[level] // TILE)
    for ty in range(count):
        for tx in range(count):
            yield _encode(painter.tile(level, ty, tx))
        progress(count)


def _encode(pixels: NDArray[np.uint8]) -> bytes:
    """A baseline JPEG stream in YCbCr, chroma halved across (YBR_FULL_422)."""
    data = imagecodecs.jpeg8_encode(
        np.ascontiguousarray(pixels), level=JPEG_QUALITY, subsampling="422"
    )
    return bytes(data)


def _header(
    slide: SlideIdentity,
    uids: _SeriesUids,
    flavour: str,
    size: int,
    tile: int,
    spacing_mm: float,
    number: int,
) -> Dataset:
    ds = _common(slide, uids, flavour, number)
    ds.TotalPixelMatrixRows = ds.TotalPixelMatrixColumns = size
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = (-(-size // tile)) ** 2
    ds.ImagedVolumeWidth = ds.ImagedVolumeHeight = size * spacing_mm
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.004
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def _single_frame_header(
    slide: SlideIdentity, uids: _SeriesUids, flavour: str, pixels: NDArray[np.uint8], size: int
) -> Dataset:
    number = {"LABEL": 100, "OVERVIEW": 101, "THUMBNAIL": 102}[flavour]
    ds = _common(slide, uids, flavour, number)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = pixels.shape[:2]
    ds.NumberOfFrames = 1
    if flavour == "THUMBNAIL":
        spacing_mm = DICOM_MPP * size / pixels.shape[1] / 1000.0
        ds.ImagedVolumeWidth = ds.ImagedVolumeHeight = size * DICOM_MPP / 1000.0
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def _common(slide: SlideIdentity, uids: _SeriesUids, flavour: str, number: int) -> Dataset:
    """The attributes every instance of the series shares, and its own SOP Instance UID."""
    month, day, year = (int(part) for part in slide.date.split("/"))
    scanned = dt.date(2000 + year, month, day).strftime("%Y%m%d")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds.SOPClassUID = UID(WSI_SOP_CLASS)
    ds.SOPInstanceUID = uids.uid(f"instance-{number}")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.study, uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PatientName, ds.PatientID = slide.patient_name, slide.patient_id
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDateTime = scanned
    ds.StudyTime = ds.ContentTime = slide.time.replace(":", "")
    ds.AccessionNumber = slide.case_number
    ds.StudyID = slide.case_number
    ds.ContainerIdentifier = slide.case_number
    ds.Modality = "SM"
    ds.Manufacturer = "mira sample scanner"
    ds.DeviceSerialNumber = slide.scanscope_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = number + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavour, "NONE"]
    ds.BurnedInAnnotation = "YES" if flavour in ("LABEL", "OVERVIEW") else "NO"
    ds.SpecimenLabelInImage = "YES" if flavour in ("LABEL", "OVERVIEW") else "NO"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    return ds


def _write(path: Path, header: Dataset, frames: Iterable[bytes]) -> Path:
    """The header through pydicom, then the encapsulated pixel data streamed frame by frame
    (an empty Basic Offset Table: one fragment per frame), written aside then renamed."""
    partial = path.with_suffix(".partial")
    with partial.open("wb") as stream:
        pydicom.dcmwrite(stream, header, enforce_file_format=True)
        stream.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, UNDEFINED_LENGTH))
        _item(stream, b"")
        for frame in frames:
            _item(stream, frame + b"\0" * (len(frame) % 2))
        stream.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    partial.replace(path)
    return path


def _item(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(data)))
    stream.write(data)

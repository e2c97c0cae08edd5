"""DICOM whole-slide images out: a (de-identified) TIFF slide written as a VL Whole Slide
Microscopy series, its JPEG tiles copied as the frames, so a lab can push research slides to a
DICOMweb viewer or archive.

One instance per tiled level of the slide's own pyramid (TILED_FULL, the level's tiles in row
order, one fragment per frame behind a Basic Offset Table). A TIFF's JPEG tiles are abbreviated
streams that share the page's JPEG tables; a DICOM frame must be a whole stream, so the tables
are put back into each frame (between its SOI and the rest), and an Aperio tile, whose components
are R, G, B without a marker saying so, gets an Adobe APP14 segment (transform 0) so that any
decoder reads it as RGB, as the Photometric Interpretation says. Nothing is decoded or encoded.

The series is named by UIDs derived from the slide's SHA-256 (the same slide gives the same
series), carries the slide's physical pixel size, an sRGB ICC profile, and no identifier but the
pseudonymous patient ID the caller passes: the source is a research-store slide, de-identified
already. Only levels of 8-bit JPEG tiles are written; anything else is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, BinaryIO, cast

import pydicom
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

import mira
from mira.errors import InvalidInput
from storage import Store, join_key
from tasks.wsi.source import full_resolution_page, open_slide, slide_metadata

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_COMPRESSION = 7
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0: RGB
UNDEFINED_LENGTH = 0xFFFFFFFF
BRIGHTFIELD = ("111744", "DCM", "Brightfield illumination")
FULL_SPECTRUM = ("414298005", "SCT", "Full Spectrum")
MICROSCOPE_SLIDE = ("433466003", "SCT", "Microscope slide")
SLIDE_SPECIMEN = ("1179252003", "SCT", "Slide")


@dataclass(frozen=True)
class DicomSlideOut:
    """What was written: the instances' keys (one per level), the series UID, level sizes."""

    keys: tuple[str, ...]
    series_uid: str
    levels: tuple[tuple[int, int], ...]  # (height, width) of each level written


def write_dicom_slide(
    source: Store, key: str, target: Store, folder: str, *, patient_id: str = ""
) -> DicomSlideOut:
    """Write the slide at ``key`` as a DICOM series of instances ``<folder>/level-<n>.dcm``.

    Each instance is written to a temporary file, then stored (a reader never sees half of
    one). Raises ``InvalidInput`` for a slide whose level 0 is not tiled 8-bit JPEG.
    """
    uids = _Uids(source.sha256(key))
    keys, sizes = [], []
    with open_slide(source, key) as tif:
        page = full_resolution_page(tif)
        metadata = slide_metadata(tif, page)
        pages = _jpeg_levels(tif, page)
        mpp = metadata.mpp_x or 1.0  # no physical size known: 1 µm, flagged in the header
        volume_mm = (int(page.imagewidth) * mpp / 1000.0, int(page.imagelength) * mpp / 1000.0)
        for number, level in enumerate(pages):
            # a reduced level's pixel is a whole number of level-0 pixels (viewers need it so);
            # its last row and column may cover less of the slide
            factor = max(1, round(int(page.imagewidth) / int(level.imagewidth)))
            spacing_mm = mpp * factor / 1000.0
            header = _level_header(level, uids, number, spacing_mm, volume_mm, patient_id)
            header.Manufacturer = metadata.vendor or "unknown"
            instance_key = join_key(folder, f"level-{number}.dcm")
            with tempfile.TemporaryFile() as stream:
                _write_instance(stream, header, _frames(tif, level))
                stream.seek(0)
                target.write_stream(instance_key, stream)
            keys.append(instance_key)
            sizes.append((int(level.imagelength), int(level.imagewidth)))
    return DicomSlideOut(tuple(keys), str(uids.series), tuple(sizes))


def _jpeg_levels(tif: tifffile.TiffFile, level0: tifffile.TiffPage) -> list[tifffile.TiffPage]:
    """Level 0 and every reduced level stored as square JPEG tiles of the same size."""
    name = tif.filename

    def copyable(page: Any) -> bool:
        return (
            page.compression == JPEG_COMPRESSION
            and page.bitspersample == 8
            and page.is_tiled
            and page.tilewidth == page.tilelength
            and page.samplesperpixel in (1, 3)
            and page.planarconfig == 1
        )

    if not copyable(level0):
        raise InvalidInput(f"{name}: DICOM out copies JPEG tiles; level 0 is not tiled 8-bit JPEG")
    levels = [level.keyframe for level in tif.series[0].levels]
    return [level0] + [page for page in levels[1:] if copyable(page)]


def _frames(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> Iterator[bytes]:
    """Each tile as a whole JPEG stream, in row order (a missing tile is refused: TILED_FULL)."""
    tables = page.jpegtables or b""
    rgb = _photometric(page) == "RGB"
    if any(count == 0 for count in page.databytecounts):
        raise InvalidInput(f"{tif.filename}: a level with missing tiles cannot be TILED_FULL")
    segments = cast(
        Iterator[tuple[bytes | None, int]],
        tif.filehandle.read_segments(page.dataoffsets, page.databytecounts, sort=True),
    )
    ordered: dict[int, bytes] = {}
    expected = 0
    for data, index in segments:
        ordered[index] = bytes(data or b"")
        while expected in ordered:
            yield _whole_stream(ordered.pop(expected), tables, rgb)
            expected += 1


def _whole_stream(tile: bytes, tables: bytes, rgb: bool) -> bytes:
    """SOI, the Adobe RGB marker where needed, the shared tables (without their SOI and EOI),
    then the tile's own segments."""
    if tile[:2] != b"\xff\xd8":
        raise InvalidInput("a JPEG tile that does not start with SOI")
    inner = tables[2:-2] if tables[:2] == b"\xff\xd8" and tables[-2:] == b"\xff\xd9" else b""
    return b"\xff\xd8" + (ADOBE_RGB if rgb else b"") + inner + tile[2:]


def _photometric(page: tifffile.TiffPage) -> str:
    if page.samplesperpixel == 1:
        return "MONOCHROME2"
    colorspace, _ = tifffile.tifffile.jpeg_decode_colorspace(
        page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
    )
    # libjpeg's JCS_RGB (2): the components are R, G, B (Aperio); else YCbCr
    return "RGB" if colorspace in (2, "RGB") else "YBR_FULL_422"


class _Uids:
    """The series' UIDs, ``2.25.<integer>`` from the slide's SHA-256 and a name."""

    def __init__(self, sha256: str) -> None:
        self._sha256 = sha256
        self.study = self.uid("study")
        self.series = self.uid("series")
        self.frame_of_reference = self.uid("frame-of-reference")
        self.pyramid = self.uid("pyramid")
        self.dimension_organization = self.uid("dimension-organization")
        self.specimen = self.uid("specimen")

    def uid(self, name: str) -> UID:
        digest = hashlib.sha256(f"mira-dicom-out:{self._sha256}:{name}".encode()).digest()
        return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def _level_header(
    page: tifffile.TiffPage,
    uids: _Uids,
    number: int,
    spacing_mm: float,
    volume_mm: tuple[float, float],
    patient_id: str,
) -> Dataset:
    tile = int(page.tilewidth)
    rows, columns = int(page.imagelength), int(page.imagewidth)
    ds = _common(uids, patient_id)
    ds.SOPInstanceUID = uids.uid(f"level-{number}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number + 1
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.SamplesPerPixel = int(page.samplesperpixel)
    ds.PhotometricInterpretation = _photometric(page)
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, columns
    ds.NumberOfFrames = (-(-rows // tile)) * (-(-columns // tile))
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = volume_mm
    ds.ImagedVolumeDepth = 0.001
    stored = sum(int(count) for count in page.databytecounts) or 1
    ds.LossyImageCompressionRatio = f"{rows * columns * ds.SamplesPerPixel / stored:.2f}"
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing_mm:.10g}", f"{spacing_mm:.10g}"]
    measures.SliceThickness = "0.001"
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return ds


def _common(uids: _Uids, patient_id: str) -> Dataset:
    """The attributes every instance shares: patient (pseudonymous), study, series, frame of
    reference, equipment, specimen, optical path and image pixel description."""
    now = dt.datetime.now(dt.UTC)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds.file_meta.MediaStorageSOPClassUID = UID(WSI_SOP_CLASS)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UID(WSI_SOP_CLASS)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.study, uids.series
    ds.FrameOfReferenceUID, ds.PyramidUID = uids.frame_of_reference, uids.pyramid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.Modality, ds.SeriesNumber = "SM", 1
    ds.ManufacturerModelName = "mira"
    ds.DeviceSerialNumber = "mira"
    ds.SoftwareVersions = f"mira {mira.__version__}"
    ds.ContainerIdentifier = str(uids.specimen)[-16:]
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence([_code(*MICROSCOPE_SLIDE)])
    ds.AcquisitionContextSequence = Sequence()
    specimen = Dataset()
    specimen.SpecimenIdentifier = ds.ContainerIdentifier
    specimen.SpecimenUID = uids.specimen
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenTypeCodeSequence = Sequence([_code(*SLIDE_SPECIMEN)])
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = "0"
    origin.YOffsetInSlideCoordinateSystem = "0"
    origin.ZOffsetInSlideCoordinateSystem = "0"
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImageOrientationSlide = ["0", "-1", "0", "-1", "0", "0"]
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = ds.BurnedInAnnotation = "NO"
    ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.DimensionOrganizationType = "TILED_FULL"
    organization = Dataset()
    organization.DimensionOrganizationUID = uids.dimension_organization
    ds.DimensionOrganizationSequence = Sequence([organization])
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    ds.OpticalPathSequence = Sequence([_optical_path()])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def _optical_path() -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = Sequence([_code(*BRIGHTFIELD)])
    path.IlluminationColorCodeSequence = Sequence([_code(*FULL_SPECTRUM)])
    path.ICCProfile = _srgb_profile()
    return path


@cache
def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _write_instance(stream: BinaryIO, header: Dataset, frames: Iterator[bytes]) -> None:
    """The header through pydicom, then the frames encapsulated with a Basic Offset Table
    (its offsets patched in once every frame is written: the frames are streamed)."""
    pydicom.dcmwrite(stream, header, enforce_file_format=True)
    count = int(header.NumberOfFrames)
    stream.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, UNDEFINED_LENGTH))
    stream.write(struct.pack("<HHI", 0xFFFE, 0xE000, 4 * count))
    table_at = stream.tell()
    stream.write(b"\0" * (4 * count))
    first = stream.tell()
    offsets = []
    for frame in frames:
        offsets.append(stream.tell() - first)
        padded = frame + b"\0" * (len(frame) % 2)
        stream.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(padded)))
        stream.write(padded)
    if len(offsets) != count:
        raise InvalidInput(f"{len(offsets)} tiles where the level needs {count} frames")
    stream.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    end = stream.tell()
    stream.seek(table_at)
    stream.write(struct.pack(f"<{count}I", *offsets))
    stream.seek(end)

"""DICOM whole-slide images: one VL Whole Slide Microscopy series is one slide.

A scanner exports a slide as a series of instances: one per pyramid level (a level too large for
one file is split into a concatenation of several), plus LABEL, OVERVIEW and THUMBNAIL images.
``read_wsi_instance`` reads what one instance says about its place in the slide (level size, tile
size, frame layout, codec) and where each of its frames lies in the file; ``check_wsi_series``
decides whether a set of instances is a complete slide: every level's concatenation whole, every
level's frames complete (TILED_FULL: one frame per tile of the total pixel matrix; TILED_SPARSE:
each frame's position on the tile grid, inside the matrix, none twice). Ingest quarantines the
whole series when it is not; conversion reads level 0 through the same records.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset

from tasks.ingest.dicom_frames import FrameSpans, frame_spans
from tasks.ingest.inspection import RejectedObject, Rejection

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
FLAVOURS = ("VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL")
# Transfer syntax -> the codec of its frames (None: native, uncompressed pixels).
FRAME_CODECS: dict[str, str | None] = {
    "1.2.840.10008.1.2": None,  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": None,  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50": "jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.80": "jpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "jpegls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "jpeg2000",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "jpeg2000",  # JPEG 2000
}


@dataclass(frozen=True)
class WsiInstance:
    """What one VL Whole Slide Microscopy instance says about its part of the slide.

    Sizes are in pixels, ``positions`` (TILED_SPARSE only) hold each frame's top-left pixel
    ``(row, column)`` in the level's total pixel matrix, counted from 0.
    """

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    flavour: str  # VOLUME, LABEL, OVERVIEW or THUMBNAIL (Image Type value 3)
    transfer_syntax: str
    photometric: str
    samples: int
    bits_allocated: int
    tile_rows: int
    tile_columns: int
    total_rows: int
    total_columns: int
    frames: int
    organization: str  # TILED_FULL or TILED_SPARSE
    focal_planes: int = 1
    optical_paths: int = 1
    concatenation_uid: str = ""
    concatenation_number: int = 1
    concatenation_total: int = 1
    frame_offset: int = 0  # frames of the concatenation's earlier parts
    positions: tuple[tuple[int, int], ...] = ()
    pixel_spacing_mm: tuple[float, float] | None = None  # (between rows, between columns)
    imaged_volume_mm: tuple[float, float] | None = None  # (width, height)
    objective_power: float | None = None
    planar: bool = False  # uncompressed colour frames stored plane by plane (RRR...GGG...BBB)
    manufacturer: str = ""

    @property
    def codec(self) -> str | None:
        """``jpeg``, ``jpeg2000``, ``jpegls``, or None for uncompressed frames."""
        return FRAME_CODECS[self.transfer_syntax]

    @property
    def tiles_across(self) -> int:
        return math.ceil(self.total_columns / self.tile_columns)

    @property
    def tiles_down(self) -> int:
        return math.ceil(self.total_rows / self.tile_rows)

    @property
    def image_uid(self) -> str:
        """The UID that names the image this instance is part of (its concatenation's)."""
        return self.concatenation_uid or self.sop_instance_uid


@dataclass(frozen=True)
class WsiLevel:
    """One pyramid level: its instances (one, or a concatenation's parts in order)."""

    instances: tuple[WsiInstance, ...]

    @property
    def first(self) -> WsiInstance:
        return self.instances[0]

    @property
    def frames(self) -> int:
        return sum(instance.frames for instance in self.instances)


@dataclass(frozen=True)
class WsiSeries:
    """A complete slide: its levels, largest first, and its LABEL/OVERVIEW/THUMBNAIL instances."""

    series_uid: str
    levels: tuple[WsiLevel, ...]
    others: tuple[WsiInstance, ...]


def read_wsi_instance(stream: BinaryIO) -> tuple[WsiInstance, list[FrameSpans]]:
    """The instance's record and the file spans of its frames, read from its header and the
    item headers of its pixel data (no frame is read).

    Raises ``RejectedObject`` for an instance that is not a readable whole-slide image (missing
    attributes, an unsupported transfer syntax or layout, frames missing or past the end).
    """
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(stream, stop_before_pixels=True, defer_size=256 * 1024)
        except Exception as err:
            raise RejectedObject("unreadable", f"DICOM header: {err}") from err
        pixel_start = stream.tell()
    instance = wsi_instance_from_header(ds)
    spans = frame_spans(stream, pixel_start, instance, _implicit(instance))
    return instance, spans


def _implicit(instance: WsiInstance) -> bool:
    """Whether the data set is Implicit VR Little Endian (the only implicit syntax allowed)."""
    return instance.transfer_syntax == "1.2.840.10008.1.2"


def wsi_instance_from_header(ds: Dataset) -> WsiInstance:
    """The slide facts of a VL Whole Slide Microscopy header (read without its pixel data)."""
    if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
        raise RejectedObject("unsupported-type", "not a VL Whole Slide Microscopy Image instance")
    missing = [
        keyword
        for keyword in (
            "SOPInstanceUID",
            "SeriesInstanceUID",
            "StudyInstanceUID",
            "ImageType",
            "Rows",
            "Columns",
            "SamplesPerPixel",
            "BitsAllocated",
            "PhotometricInterpretation",
            "TotalPixelMatrixRows",
            "TotalPixelMatrixColumns",
        )
        if ds.get(keyword) in (None, "")
    ]
    if missing:
        raise RejectedObject("missing-attribute", f"whole-slide image without {', '.join(missing)}")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if syntax not in FRAME_CODECS:
        raise RejectedObject("unsupported-type", f"frames in transfer syntax {syntax}")
    image_type = [str(value).upper() for value in ds.ImageType]
    flavour = image_type[2] if len(image_type) > 2 else ""
    if flavour not in FLAVOURS:
        raise RejectedObject("unsupported-type", f"whole-slide image of type {flavour or '?'}")
    organization = _organization(ds)
    if organization not in ("TILED_FULL", "TILED_SPARSE"):
        raise RejectedObject("unsupported-type", f"dimension organization {organization}")
    instance = WsiInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        flavour=flavour,
        transfer_syntax=syntax,
        photometric=str(ds.PhotometricInterpretation).strip(),
        samples=int(ds.SamplesPerPixel),
        bits_allocated=int(ds.BitsAllocated),
        tile_rows=int(ds.Rows),
        tile_columns=int(ds.Columns),
        total_rows=int(ds.TotalPixelMatrixRows),
        total_columns=int(ds.TotalPixelMatrixColumns),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        organization=organization,
        focal_planes=int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1),
        optical_paths=int(ds.get("NumberOfOpticalPaths", 1) or 1),
        concatenation_uid=str(ds.get("ConcatenationUID", "") or ""),
        concatenation_number=int(ds.get("InConcatenationNumber", 1) or 1),
        concatenation_total=int(ds.get("InConcatenationTotalNumber", 1) or 1),
        frame_offset=int(ds.get("ConcatenationFrameOffsetNumber", 0) or 0),
        positions=_sparse_positions(ds) if organization == "TILED_SPARSE" else (),
        pixel_spacing_mm=_pixel_spacing(ds),
        imaged_volume_mm=_imaged_volume(ds),
        objective_power=_objective_power(ds),
        planar=int(ds.get("PlanarConfiguration", 0) or 0) == 1,
        manufacturer=str(ds.get("Manufacturer", "") or ""),
    )
    _check_instance(instance)
    return instance


def _organization(ds: Dataset) -> str:
    """TILED_FULL or TILED_SPARSE as the instance says; an older instance that does not say is
    sparse when its frames carry positions, else tiled in full (one frame, or frames in row
    order, as early scanners wrote them)."""
    declared = str(ds.get("DimensionOrganizationType", "") or "").upper()
    if declared:
        return declared
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    positioned = bool(per_frame) and "PlanePositionSlideSequence" in per_frame[0]
    return "TILED_SPARSE" if positioned else "TILED_FULL"


def _check_instance(instance: WsiInstance) -> None:
    if min(instance.tile_rows, instance.tile_columns, instance.total_rows) < 1:
        raise RejectedObject("invalid-pyramid", "a whole-slide image with an empty tile or matrix")
    if instance.samples not in (1, 3) or instance.bits_allocated not in (8, 16):
        raise RejectedObject(
            "unsupported-type",
            f"{instance.samples} samples of {instance.bits_allocated} bits: only grey or RGB, "
            "8 or 16 bits",
        )
    if instance.organization == "TILED_SPARSE" and len(instance.positions) != instance.frames:
        raise RejectedObject(
            "incomplete-slide",
            f"TILED_SPARSE instance {instance.sop_instance_uid} has {instance.frames} frames "
            f"but {len(instance.positions)} frame positions",
        )


def _sparse_positions(ds: Dataset) -> tuple[tuple[int, int], ...]:
    """Each frame's top-left pixel (row, column) from the per-frame plane positions (1-based)."""
    positions = []
    for item in ds.get("PerFrameFunctionalGroupsSequence", []):
        try:
            plane = item.PlanePositionSlideSequence[0]
            row = int(plane.RowPositionInTotalImagePixelMatrix) - 1
            column = int(plane.ColumnPositionInTotalImagePixelMatrix) - 1
        except (AttributeError, IndexError, TypeError, ValueError):
            raise RejectedObject(
                "missing-attribute", "a TILED_SPARSE frame without its plane position"
            ) from None
        positions.append((row, column))
    return tuple(positions)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        rows, columns = (float(value) for value in measures.PixelSpacing)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return (rows, columns) if rows > 0 and columns > 0 else None


def _imaged_volume(ds: Dataset) -> tuple[float, float] | None:
    try:
        width, height = float(ds.ImagedVolumeWidth), float(ds.ImagedVolumeHeight)
    except (AttributeError, TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def _objective_power(ds: Dataset) -> float | None:
    for path in ds.get("OpticalPathSequence", []):
        power = path.get("ObjectiveLensPower")
        if power not in (None, ""):
            try:
                return float(power) or None
            except (TypeError, ValueError):
                return None
    return None


def check_wsi_series(instances: Iterable[WsiInstance]) -> WsiSeries:
    """The slide a series' instances make, or ``RejectedObject("incomplete-slide", ...)`` (or
    ``unsupported-type``) saying what is missing or wrong."""
    instances = list(instances)
    uids = {(i.study_uid, i.series_uid, i.frame_of_reference_uid) for i in instances}
    if len(uids) != 1:
        raise RejectedObject(
            "incomplete-slide", "the instances disagree on study, series or frame of reference"
        )
    volumes = [i for i in instances if i.flavour == "VOLUME"]
    if not volumes:
        raise RejectedObject("incomplete-slide", "the series has no VOLUME (pyramid level) image")
    images: dict[str, list[WsiInstance]] = defaultdict(list)
    for instance in volumes:
        images[instance.image_uid].append(instance)
    levels = [_level(parts) for parts in images.values()]
    levels.sort(key=lambda level: -level.first.total_columns * level.first.total_rows)
    _check_levels(levels)
    others = tuple(i for i in instances if i.flavour != "VOLUME")
    return WsiSeries(instances[0].series_uid, tuple(levels), others)


def _level(parts: list[WsiInstance]) -> WsiLevel:
    """One image's concatenation parts, checked whole and in order, its frames complete."""
    parts = sorted(parts, key=lambda part: part.concatenation_number)
    first = parts[0]
    uid = first.image_uid
    if [p.concatenation_number for p in parts] != list(range(1, first.concatenation_total + 1)):
        have = ", ".join(str(p.concatenation_number) for p in parts)
        raise RejectedObject(
            "incomplete-slide",
            f"image {uid}: concatenation parts {have} of {first.concatenation_total}",
        )
    offset = 0
    for part in parts:
        if _geometry(part) != _geometry(first):
            raise RejectedObject("incomplete-slide", f"image {uid}: parts of different geometry")
        if part.frame_offset != offset:
            raise RejectedObject(
                "incomplete-slide",
                f"image {uid}: part {part.concatenation_number} starts at frame "
                f"{part.frame_offset}, not {offset}",
            )
        offset += part.frames
    if first.focal_planes != 1 or first.optical_paths != 1:
        raise RejectedObject(
            "unsupported-type", "whole-slide images of several focal planes or optical paths"
        )
    level = WsiLevel(tuple(parts))
    _check_frames(level)
    return level


def _geometry(instance: WsiInstance) -> tuple[Any, ...]:
    return (
        instance.total_rows,
        instance.total_columns,
        instance.tile_rows,
        instance.tile_columns,
        instance.samples,
        instance.bits_allocated,
        instance.photometric,
        instance.organization,
    )


def _check_frames(level: WsiLevel) -> None:
    """TILED_FULL: one frame per tile; TILED_SPARSE: each frame on its own tile of the grid."""
    first = level.first
    tiles = first.tiles_across * first.tiles_down
    name = f"level {first.total_columns}x{first.total_rows} ({first.image_uid})"
    if first.organization == "TILED_FULL":
        if level.frames != tiles:
            raise RejectedObject(
                "incomplete-slide",
                f"{name} has {level.frames} frames where its {first.tiles_across}x"
                f"{first.tiles_down} tiles need {tiles}",
            )
        return
    seen: set[tuple[int, int]] = set()
    for instance in level.instances:
        for row, column in instance.positions:
            on_grid = row % first.tile_rows == 0 and column % first.tile_columns == 0
            inside = 0 <= row < first.total_rows and 0 <= column < first.total_columns
            if not (on_grid and inside) or (row, column) in seen:
                raise RejectedObject(
                    "incomplete-slide",
                    f"{name}: a frame at pixel ({row}, {column}) is off the tile grid, outside "
                    "the matrix or a second frame for its tile",
                )
            seen.add((row, column))


def _check_levels(levels: Sequence[WsiLevel]) -> None:
    """Each level smaller than the one before and covering the same slide area."""
    for previous, level in itertools.pairwise(levels):
        a, b = previous.first, level.first
        if b.total_columns >= a.total_columns or b.total_rows >= a.total_rows:
            raise RejectedObject(
                "incomplete-slide",
                f"two VOLUME levels of {b.total_columns}x{b.total_rows} and "
                f"{a.total_columns}x{a.total_rows}: neither is a reduced copy of the other",
            )


def series_rejection(series_uid: str, instance_uid: str, reason: Rejection) -> Rejection:
    """Why an instance goes to the quarantine with its slide: another part was refused."""
    return Rejection(
        "incomplete-slide",
        f"whole-slide series {series_uid}: instance {instance_uid} was refused "
        f"({reason.reason}: {reason.detail})",
    )


def inspect_wsi_instance(stream: BinaryIO) -> tuple[WsiInstance | None, Rejection | None]:
    """For ingest: the instance's record (None when it is no readable whole-slide instance) and
    why it cannot be part of a slide (None when its frames are all there)."""
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(stream, stop_before_pixels=True, defer_size=256 * 1024)
        except Exception:
            return None, None  # the DICOM checks say why
        pixel_start = stream.tell()
    if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
        return None, None
    try:
        instance = wsi_instance_from_header(ds)
    except RejectedObject as rejected:
        return None, rejected.rejection
    try:
        frame_spans(stream, pixel_start, instance, _implicit(instance))
    except RejectedObject as rejected:
        return instance, rejected.rejection
    return instance, None


def hold_back_incomplete_slides(
    accepted: Sequence[Any], quarantined: Sequence[tuple[Any, Rejection]]
) -> tuple[list[Any], list[tuple[Any, Rejection]]]:
    """Split the accepted objects (ingest's ``InspectedObject``) into those that stay accepted
    and the whole-slide instances that go to the quarantine with their slide: every instance
    of a series with a refused instance, or whose instances are not a complete slide."""
    refused: dict[str, tuple[str, Rejection]] = {}
    for item, rejection in quarantined:
        wsi = item.inspection.wsi
        if wsi is not None:
            refused.setdefault(wsi.series_uid, (wsi.sop_instance_uid, rejection))
    series: dict[str, list[Any]] = defaultdict(list)
    for item in accepted:
        if item.inspection.wsi is not None:
            series[item.inspection.wsi.series_uid].append(item)
    held: dict[str, Rejection] = {}
    for uid, items in series.items():
        if uid in refused:
            held[uid] = series_rejection(uid, *refused[uid])
            continue
        try:
            check_wsi_series(item.inspection.wsi for item in items)
        except RejectedObject as rejected:
            held[uid] = rejected.rejection
    kept = [
        i for i in accepted if i.inspection.wsi is None or i.inspection.wsi.series_uid not in held
    ]
    moved = [
        (i, held[i.inspection.wsi.series_uid])
        for i in accepted
        if i.inspection.wsi is not None and i.inspection.wsi.series_uid in held
    ]
    return kept, moved

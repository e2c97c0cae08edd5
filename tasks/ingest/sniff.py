"""What a dropped object is, judged from its content: checksum, sniffed format, then the checks.

``inspect_object`` is a pure function of the object's bytes (read through a seekable stream), so
the same inspection runs inline or on a Dask worker and never writes anything. A bad object yields
an ``Inspection`` carrying a ``Rejection`` with a machine-readable reason; only storage failures
(which say nothing about the object) propagate as errors.
"""

from __future__ import annotations

import io
import itertools
import re
import struct
import warnings
from dataclasses import replace
from typing import Any, BinaryIO

import numpy as np
import tifffile

from mira.errors import MiraError
from storage.base import read_up_to, sha256_stream
from tasks.ingest.bombs import check_tile_geometry, check_tile_stream
from tasks.ingest.dicom_header import inspect_dicom
from tasks.ingest.dicom_series import WSI_SOP_CLASS, inspect_wsi_instance
from tasks.ingest.inspection import (
    DEFAULT_MAX_DECODED_BYTES,
    DETAIL_CHARS,
    DetectedFormat,
    Inspection,
    RejectedObject,
    Rejection,
    SlideHeader,
)
from tasks.slide_vendors import main_series, slide_vendor, vendor_optics

HEAD_BYTES = 512
TIFF_MAGIC: dict[bytes, DetectedFormat] = {
    b"II*\0": "tiff",
    b"MM\0*": "tiff",
    b"II+\0": "bigtiff",
    b"MM\0+": "bigtiff",
}
RAW_DICOM_GROUPS = frozenset({0x0002, 0x0008})
APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def inspect_object(
    source: bytes | BinaryIO,
    manifest_sha256: str | None = None,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Inspection:
    """Inspect one object from its content: checksum, sniffed format, then DICOM or slide checks.

    ``source`` is the object's bytes or a store's stream (``Store.open_read``, whose read failures
    are already mira's errors) positioned anywhere; ``manifest_sha256`` is the checksum the batch
    manifest promises, if any. Raises only ``MiraError`` for storage failures; every defect of the
    object itself comes back as ``Inspection.rejection``. ``max_decoded_bytes`` is the most a check
    may decode (one slide tile, an inflated data set): more is a ``decompression-bomb``.
    """
    stream = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else source
    stream.seek(0)
    sha256, size = sha256_stream(stream)
    if size == 0:
        return Inspection(sha256, 0, "empty", rejection=Rejection("empty-file", "zero bytes"))
    stream.seek(0)
    detected = sniff_format(read_up_to(stream, HEAD_BYTES))
    base = Inspection(sha256, size, detected)
    if manifest_sha256 is not None and sha256 != manifest_sha256.lower():
        detail = f"SHA-256 {sha256} differs from the manifest's {manifest_sha256.lower()}"
        return replace(base, rejection=Rejection("checksum-mismatch", detail))
    try:
        return _inspect_content(base, stream, max_decoded_bytes)
    except RejectedObject as rejected:
        return replace(base, rejection=rejected.rejection)
    except MiraError:
        raise
    except Exception as err:  # a parser choking on bad bytes: the object is unreadable
        detail = f"{type(err).__name__}: {err}"[:DETAIL_CHARS]
        return replace(base, rejection=Rejection("unreadable", detail))


def _inspect_content(base: Inspection, stream: BinaryIO, max_decoded_bytes: int) -> Inspection:
    if base.detected_format in ("dicom", "dicom-no-preamble"):
        return _inspect_dicom_object(base, stream, max_decoded_bytes)
    if base.detected_format in ("tiff", "bigtiff"):
        slide, is_svs = inspect_slide(stream, base.size, max_decoded_bytes)
        return replace(base, slide=slide, detected_format="svs" if is_svs else base.detected_format)
    stream.seek(0)
    kind = "text" if _looks_like_text(read_up_to(stream, HEAD_BYTES)) else "binary"
    raise RejectedObject("unsupported-type", f"content is neither DICOM nor TIFF ({kind} data)")


def _inspect_dicom_object(base: Inspection, stream: BinaryIO, max_decoded_bytes: int) -> Inspection:
    """The DICOM header checks, then, for a whole-slide instance, its part of the slide (kept
    on a refused instance too, so the rest of its slide is held back with it)."""
    try:
        header = inspect_dicom(stream, base.size, base.detected_format, max_decoded_bytes)
    except RejectedObject as rejected:
        bomb = rejected.rejection.reason == "decompression-bomb"
        wsi = None if bomb else inspect_wsi_instance(stream)[0]
        return replace(base, wsi=wsi, rejection=rejected.rejection)
    if header.sop_class_uid != WSI_SOP_CLASS:
        return replace(base, dicom=header)
    wsi, rejection = inspect_wsi_instance(stream)
    return replace(base, dicom=header, wsi=wsi, rejection=rejection)


def sniff_format(head: bytes) -> DetectedFormat:
    """The format the first bytes announce: DICM preamble, TIFF magic, or a raw DICOM tag.

    A raw DICOM data set (no preamble) is only a candidate here; ``inspect_dicom`` confirms it.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in TIFF_MAGIC:
        return TIFF_MAGIC[head[:4]]
    if len(head) >= 8 and _starts_with_dicom_tag(head):
        return "dicom-no-preamble"
    return "unknown"


def _starts_with_dicom_tag(head: bytes) -> bool:
    little = struct.unpack_from("<H", head)[0]
    big = struct.unpack_from(">H", head)[0]
    return little in RAW_DICOM_GROUPS or big in RAW_DICOM_GROUPS


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def inspect_slide(
    stream: BinaryIO, size: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> tuple[SlideHeader, bool]:
    """Open a TIFF with tifffile and check its pyramid; returns the header and whether it is SVS."""
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tif = tifffile.TiffFile(stream)
    with tif:
        if not tif.pages:
            raise RejectedObject("unreadable", "the TIFF has no image file directory")
        first = tif.pages.first
        subifds = tuple(int(offset) for offset in first.subifds or ())
        if any(offset >= size for offset in subifds):
            raise RejectedObject("truncated", "a reduced-resolution level lies past the end")
        if not tif.series:
            raise RejectedObject("unreadable", "the TIFF holds no image series")
        levels: list[Any] = [level.pages for level in main_series(tif).levels]
        for level, pages in enumerate(levels):
            for page in pages:
                _check_tile_offsets(page, size, level)
        keyframes: list[Any] = [pages[0] for pages in levels if pages]
        _check_levels(keyframes, len(subifds))
        _check_first_tile(keyframes[0], stream, max_decoded_bytes)
        description = first.description or ""
        is_svs = description.startswith("Aperio")
        return _slide_header(tif, keyframes, description, is_svs), is_svs


def _slide_header(
    tif: tifffile.TiffFile, keyframes: list[Any], description: str, is_svs: bool
) -> SlideHeader:
    level0 = keyframes[0]
    return SlideHeader(
        width=int(level0.imagewidth),
        height=int(level0.imagelength),
        levels=len(keyframes),
        mpp=_slide_mpp(tif, level0, description, is_svs),
        vendor=slide_vendor(tif),
    )


def _check_levels(keyframes: list[Any], subifd_count: int) -> None:
    """Level 0 tiled, each level smaller than the one before, every SubIFD level used.

    tifffile leaves out of ``series.levels`` the SubIFDs that do not shrink, so a SubIFD count
    above the level count means the stored pyramid is not decreasing.
    """
    if not keyframes:
        raise RejectedObject("unreadable", "the TIFF's first series has no image")
    if not keyframes[0].is_tiled:
        raise RejectedObject(
            "unsupported-type", "level 0 is not tiled: a flat TIFF, not a whole-slide image"
        )
    if subifd_count >= len(keyframes):
        raise RejectedObject(
            "invalid-pyramid",
            f"{subifd_count} reduced-resolution levels stored but only {len(keyframes) - 1} "
            "of them can be read and are smaller than the level before",
        )
    sizes = [(int(page.imagewidth), int(page.imagelength)) for page in keyframes]
    for level, (previous, current) in enumerate(itertools.pairwise(sizes), start=1):
        if current[0] > previous[0] or current[1] > previous[1] or current == previous:
            raise RejectedObject(
                "invalid-pyramid",
                f"level {level} ({current[0]}x{current[1]}) is not smaller than level "
                f"{level - 1} ({previous[0]}x{previous[1]})",
            )


def _check_tile_offsets(page: Any, size: int, level: int) -> None:
    """Every tile (or strip) must lie inside the file; offset 0 with count 0 is a sparse tile."""
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    counts = np.asarray(page.databytecounts, dtype=np.uint64)
    if offsets.shape != counts.shape or offsets.size == 0:
        raise RejectedObject("unreadable", f"level {level} has no usable tile offsets")
    present = (offsets != 0) | (counts != 0)
    past_end = present & (offsets + counts > np.uint64(size))
    if past_end.any():
        index = int(np.argmax(past_end))
        raise RejectedObject(
            "truncated",
            f"tile {index} of level {level} ({int(counts[index])} bytes at offset "
            f"{int(offsets[index])}) lies past the end of the {size}-byte file",
        )
    if (present & ((counts == 0) | (offsets < 8))).any():
        raise RejectedObject("unreadable", f"level {level} has invalid tile offsets or byte counts")


def _check_first_tile(page: Any, stream: BinaryIO, max_decoded_bytes: int) -> None:
    """Decode one level-0 tile, so a slide whose codec or tables are broken is caught now; its
    decoded size is checked first, against the TIFF's tile geometry and the ceiling."""
    check_tile_geometry(page, max_decoded_bytes)
    offsets, counts = page.dataoffsets, page.databytecounts
    index = next((i for i, count in enumerate(counts) if count), None)
    if index is None:
        raise RejectedObject("unreadable", "level 0 holds no tile data")
    stream.seek(int(offsets[index]))
    data = read_up_to(stream, int(counts[index]))
    check_tile_stream(page, data, index)
    decoded = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
    if decoded is None:
        raise RejectedObject("unreadable", f"tile {index} of level 0 does not decode")


def _slide_mpp(tif: tifffile.TiffFile, page: Any, description: str, is_svs: bool) -> float | None:
    """Microns per pixel at level 0: Aperio's ``MPP`` field, else the vendor's metadata (NDPI,
    SCN, BIF, Philips, QPTIFF), else the TIFF resolution tags."""
    if is_svs and (match := APERIO_MPP.search(description)):
        return float(match.group(1))
    return vendor_optics(tif, page).mpp_x

"""De-identify a whole-slide image (Aperio SVS, a vendor's TIFF layout: Hamamatsu NDPI, Leica
SCN, Ventana BIF, Philips TIFF, Akoya QPTIFF; or a generic pyramidal TIFF) into a new TIFF.

Only the pyramid is kept: level 0 and its reductions, chosen by geometry (:mod:`slide_pages`);
label, macro, thumbnail and every other page are dropped whatever their descriptions say, since
they may photograph the glass label (name, MRN, birth date). The levels are copied tile by tile
as their raw compressed bytes (same compression, same JPEG tables), so pixels are bit-identical
and nothing is re-encoded; SubIFD levels stay SubIFDs. Only an allow-list of TIFF tags is
written, so DateTime, Artist, HostComputer, Software, DocumentName, PageName, XMP and unknown
vendor tags never reach the output. The Aperio ImageDescription keeps its ``Aperio Image
Library`` header (tifffile and OpenSlide detect SVS by it) and only the policy's safe keys, and
an Aperio file gets a thumbnail rebuilt from its smallest level, so it still reads as SVS. A
vendor layout keeps its levels (an NDPI level is its one restart-marker JPEG strip, copied whole
with its McuStarts) and gets its vendor metadata rebuilt from an allow-list (:mod:`vendor_scrub`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile

from mira.errors import DeidentificationError, InvalidInput
from tasks.deid.identifiers import date_forms, is_searchable, value_tokens
from tasks.deid.profile import SLIDE_DEVICE_KEYS, DeidOption, DeidPolicy
from tasks.deid.pseudonyms import check_key, pseudonymize_slide
from tasks.deid.slide_pages import PyramidPages, pyramid_pages, pyramid_thumbnail
from tasks.deid.vendor_scrub import (
    ExtraTag,
    bif_description,
    bif_xmp,
    ndpi_strip,
    ndpi_tags,
    philips_description,
    qpi_description,
    qpi_thumbnail_description,
    safe_software,
    scn_description,
    scrub_jpeg_header,
    vendor_identifiers,
)
from tasks.slide_vendors import slide_vendor, vendor_optics

_CHUNK = 1 << 22
_APERIO_FIRST_LINE = re.compile(r"Aperio Image (?:Library|Format)(?: v?[0-9A-Za-z.\-]+)?")
_APERIO_GEOMETRY = re.compile(
    r"[0-9x\[\]\(\),\->\s]*(?:(?:JPEG|J2K|JP2K|LZW|RAW|NONE)/[A-Z0-9]+(?: Q=\d+)?)?\s*"
)
_APERIO_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{2,4})")
_TIFF_DATETIME = re.compile(r"(\d{4}):(\d{2}):(\d{2})")
_IDENTIFYING_TIFF_TAGS = ("Artist", "HostComputer", "DocumentName", "PageName", "DateTime")
_NAME_PARTS = re.compile(r"[_\s]+")
_THUMBNAIL_JPEG_LEVEL = 90
# Vendor layouts whose output keeps the layout, with metadata rebuilt by ``vendor_scrub``.
VENDOR_LAYOUTS = ("hamamatsu", "leica", "ventana", "philips", "akoya")

Source = str | Path | IO[bytes]


@dataclass(frozen=True)
class SlideDeidResult:
    """What was written: the slide's pseudonym, what was removed and the optics kept.

    ``removed_images`` names the pages the output lacks (an Aperio thumbnail is rebuilt, not
    lacking); ``identifiers`` are the PHI tokens found in the input, for the PHI scan only."""

    slide_id: str
    vendor: str
    removed_images: tuple[str, ...]
    identifiers: frozenset[str]
    mpp: float | None
    magnification: float | None
    levels: int


def deidentify_slide(src: Source, dst: Source, key: bytes, policy: DeidPolicy) -> SlideDeidResult:
    """Write a de-identified copy of the slide at ``src`` to ``dst`` (path or binary file)."""
    check_key(key)
    digest = _sha256(src)
    with _open_tiff(src) as tif:
        pages = pyramid_pages(tif)
        vendor = _output_vendor(tif, pages)
        identifiers = collect_slide_identifiers(tif, policy)
        if isinstance(src, str | Path):
            identifiers |= {t for t in (Path(src).name, Path(src).stem) if is_searchable(t)}
        bigtiff = tif.is_bigtiff or _source_size(tif) > 0xF0000000
        mpp, magnification = _optics(tif, pages.base, vendor)
        with tifffile.TiffWriter(dst, bigtiff=bigtiff) as writer:
            if vendor in VENDOR_LAYOUTS:
                _write_vendor_pyramid(writer, tif, pages, vendor)
            else:
                _write_pyramid(writer, tif, pages, vendor, _safe_keys(policy))
    removed = pages.removed
    if vendor == "aperio":
        removed = tuple(n for n in removed if n not in ("associated-1", "thumbnail"))  # rebuilt
    return SlideDeidResult(
        slide_id=pseudonymize_slide(digest, key),
        vendor=vendor,
        removed_images=removed,
        identifiers=frozenset(identifiers),
        mpp=mpp,
        magnification=magnification,
        levels=pages.count,
    )


def _write_pyramid(
    writer: tifffile.TiffWriter,
    tif: tifffile.TiffFile,
    pages: PyramidPages,
    vendor: str,
    safe_keys: frozenset[str],
) -> None:
    """Level 0 (with its SubIFD levels), the rebuilt Aperio thumbnail, then the other levels."""

    def description(page: tifffile.TiffPage) -> str:
        return _scrub_description(page, vendor, safe_keys)

    base = pages.base
    _copy_page(writer, tif, base, description(base), subifds=len(pages.subifd_levels))
    for page in pages.subifd_levels:
        _copy_page(writer, tif, page, "")
    if vendor == "aperio":
        _write_thumbnail(writer, pages, description(base))
    for page in pages.levels:
        _copy_page(writer, tif, page, description(page))


def _output_vendor(tif: tifffile.TiffFile, pages: PyramidPages) -> str:
    """The layout the output keeps: Aperio, one of the vendors' TIFF layouts, or generic."""
    if pages.base.is_svs:
        return "aperio"
    vendor = slide_vendor(tif)
    return vendor if vendor in VENDOR_LAYOUTS else "generic"


def _write_vendor_pyramid(
    writer: tifffile.TiffWriter, tif: tifffile.TiffFile, pages: PyramidPages, vendor: str
) -> None:
    """The kept levels, largest first, with the vendor's metadata rebuilt from its allow-list
    (:mod:`vendor_scrub`), so the output still reads as that vendor's layout."""
    if pages.planes:
        _write_channel_pyramid(writer, tif, pages)
        return
    levels = [pages.base, *pages.subifd_levels, *pages.levels]
    first_description = {
        "leica": scn_description(tif.pages.first.description or "", levels),
        "philips": philips_description(tif.pages.first.description or "", levels),
    }.get(vendor, "")
    for index, page in enumerate(levels):
        software = safe_software(page) if vendor in ("ventana", "philips", "akoya") else None
        if vendor == "hamamatsu":
            _copy_ndpi_page(writer, tif, page)
            continue
        description = first_description if index == 0 else ""
        extratags: list[ExtraTag] = []
        if vendor == "ventana":
            description = bif_description(page)
            extratags = bif_xmp(tif) if index == 0 else []
        elif vendor == "akoya":
            description = qpi_description(page)
        _copy_page(writer, tif, page, description, software=software, extratags=extratags)


def _write_channel_pyramid(
    writer: tifffile.TiffWriter, tif: tifffile.TiffFile, pages: PyramidPages
) -> None:
    """A multiplexed QPTIFF: each level's channel pages, with a greyscale thumbnail of the
    first channel after level 0 (rebuilt from its smallest level), as QPTIFF lays them out."""
    for number, plane in enumerate(pages.planes):
        for page in plane:
            _copy_page(writer, tif, page, qpi_description(page), software=safe_software(page))
        if number == 0:
            thumbnail = pyramid_thumbnail(pages.smallest)
            writer.write(
                thumbnail,
                description=qpi_thumbnail_description(pages.base),
                software=safe_software(pages.base) or False,
                compression="zlib",
                metadata=None,
            )


def _copy_ndpi_page(
    writer: tifffile.TiffWriter, tif: tifffile.TiffFile, page: tifffile.TiffPage
) -> None:
    """An NDPI level as it is stored: its one JPEG strip with its McuStarts, the entropy-coded
    data byte for byte, the JPEG header without comment or application segments."""
    offset, count = ndpi_strip(page)
    handle = tif.filehandle
    handle.seek(offset)
    try:
        strip, shift = scrub_jpeg_header(handle.read(count))
        writer.write(
            iter([strip]),
            shape=(page.imagelength, page.imagewidth, page.samplesperpixel),
            dtype=page.dtype,
            photometric=page.photometric,
            compression=page.compression,
            compressionargs=_jpeg_colorspace(page),
            rowsperstrip=page.imagelength,
            extratags=ndpi_tags(page, shift),
            software=False,
            metadata=None,
            **_resolution(page),
        )
    except Exception as err:
        raise DeidentificationError(f"cannot copy NDPI level {page.index}: {err}") from err


def _write_thumbnail(
    writer: tifffile.TiffWriter, pages: PyramidPages, base_description: str
) -> None:
    """The second page of an Aperio file: a thumbnail made of the smallest level's pixels."""
    source = pages.smallest
    if source.planarconfig != 1 or source.samplesperpixel not in (1, 3):
        raise DeidentificationError("cannot rebuild the thumbnail of a planar or multi-band SVS")
    thumbnail = pyramid_thumbnail(source)
    header = base_description.split("|")[0].splitlines()[0]
    size = f"{pages.base.imagewidth}x{pages.base.imagelength}"
    text = f"{header}\r\n{size} -> {thumbnail.shape[1]}x{thumbnail.shape[0]} - "
    jpeg = thumbnail.dtype == np.uint8
    writer.write(
        thumbnail,
        photometric="rgb" if thumbnail.ndim == 3 else "minisblack",
        compression="jpeg" if jpeg else "zlib",
        compressionargs={"level": _THUMBNAIL_JPEG_LEVEL} if jpeg else None,
        rowsperstrip=16,
        description=text,
        software=False,
        metadata=None,
    )


@contextlib.contextmanager
def _open_tiff(src: Source) -> Iterator[tifffile.TiffFile]:
    """Open a TIFF for reading; a file that is not one is invalid input."""
    try:
        tif = tifffile.TiffFile(src)
    except Exception as err:
        raise InvalidInput(f"not a readable TIFF slide: {err}") from err
    try:
        yield tif
    finally:
        tif.close()


def _sha256(src: Source) -> str:
    """SHA-256 of the whole source file (its identity for the slide pseudonym)."""
    hasher = hashlib.sha256()
    if isinstance(src, str | Path):
        with Path(src).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        return hasher.hexdigest()
    position = src.tell()
    src.seek(0)
    while chunk := src.read(_CHUNK):
        hasher.update(chunk)
    src.seek(position)
    return hasher.hexdigest()


def _source_size(tif: tifffile.TiffFile) -> int:
    return int(tif.filehandle.size)


def _safe_keys(policy: DeidPolicy) -> frozenset[str]:
    """The Aperio keys kept: the policy's list, plus the scanner ID under Retain Device Identity."""
    if policy.has(DeidOption.RETAIN_DEVICE_IDENTITY):
        return policy.slide_safe_keys | SLIDE_DEVICE_KEYS
    return policy.slide_safe_keys


def _scrub_description(page: tifffile.TiffPage, vendor: str, safe_keys: frozenset[str]) -> str:
    """The ImageDescription to write: Aperio header + safe keys, nothing for other vendors."""
    if vendor != "aperio" or not page.description:
        return ""
    head, *pairs = page.description.split("|")
    lines = head.splitlines()
    first = lines[0].strip() if lines else ""
    header = [first if _APERIO_FIRST_LINE.fullmatch(first) else "Aperio Image Library"]
    header += [line for line in lines[1:2] if _APERIO_GEOMETRY.fullmatch(line)]
    kept = []
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name.strip() in safe_keys:
            kept.append(f"{name.strip()} = {value.strip()}")
    return "|".join(["\r\n".join(header), *kept])


def aperio_pairs(description: str) -> dict[str, str]:
    """The ``key = value`` pairs of an Aperio ImageDescription."""
    pairs = {}
    for pair in description.split("|")[1:]:
        name, _, value = pair.partition("=")
        pairs[name.strip()] = value.strip()
    return pairs


def collect_slide_identifiers(tif: tifffile.TiffFile, policy: DeidPolicy | None = None) -> set[str]:
    """Identifier tokens of a slide: unsafe Aperio values (file name, user, barcode, date...),
    and the identifying TIFF tags of every page."""
    safe_keys = _safe_keys(policy or DeidPolicy.default()) | {"Time", "Time Zone"}
    tokens: set[str] = set()
    vendor = slide_vendor(tif)
    if vendor in VENDOR_LAYOUTS:
        tokens |= vendor_identifiers(tif, vendor)
    for page in tif.pages:
        if not isinstance(page, tifffile.TiffPage):
            continue
        if page.is_svs:
            for name, value in aperio_pairs(page.description).items():
                if name == "Date":
                    tokens |= _aperio_date_tokens(value)
                elif name not in safe_keys:
                    tokens |= _value_and_parts(value)
        for tag_name in _IDENTIFYING_TIFF_TAGS:
            tag = page.tags.get(tag_name)
            if tag is not None and isinstance(tag.value, str):
                tokens |= _tiff_tag_tokens(tag_name, tag.value)
    return tokens


def _value_and_parts(value: str) -> set[str]:
    """A metadata value and its ``_``/space separated parts (file names such as
    ``S24-01234_DOE_JOHN`` carry the case number and the patient's name)."""
    parts = {part for part in _NAME_PARTS.split(value) if is_searchable(part)}
    return set(value_tokens("LO", value)) | parts


def _aperio_date_tokens(value: str) -> set[str]:
    """An Aperio ``MM/DD/YY`` date in every form the scanner and people write it."""
    match = _APERIO_DATE.fullmatch(value.strip())
    if not match:
        return set(value_tokens("LO", value))
    month, day, year = (int(g) for g in match.groups())
    year += 2000 if year < 100 else 0
    return {value.strip()} | date_forms(f"{year:04d}{month:02d}{day:02d}")


def _tiff_tag_tokens(name: str, value: str) -> set[str]:
    """Tokens of one identifying TIFF tag (DateTime as a date, the others as text)."""
    if name == "DateTime":
        match = _TIFF_DATETIME.match(value)
        return date_forms("".join(match.groups())) if match else set()
    return set(value_tokens("LO", value))


def _optics(
    tif: tifffile.TiffFile, page: tifffile.TiffPage, vendor: str
) -> tuple[float | None, float | None]:
    """Microns per pixel and objective magnification of the base level, when recorded."""
    if vendor == "aperio":
        pairs = aperio_pairs(page.description)
        return _number(pairs.get("MPP")), _number(pairs.get("AppMag"))
    if vendor in VENDOR_LAYOUTS:
        optics = vendor_optics(tif, page)
        return optics.mpp_x, optics.objective
    unit = page.tags.get("ResolutionUnit")
    xres = page.tags.get("XResolution")
    if unit is None or xres is None:
        return None, None
    numerator, denominator = xres.value
    if not numerator:
        return None, None
    per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    mpp = per_unit * denominator / numerator if per_unit else None
    return mpp, None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _copy_page(
    writer: tifffile.TiffWriter,
    tif: tifffile.TiffFile,
    page: tifffile.TiffPage,
    description: str,
    subifds: int = 0,
    software: str | None = None,
    extratags: list[ExtraTag] | None = None,
) -> None:
    """Write one page from its raw compressed tiles or strips (no decoding, no re-encoding);
    the next ``subifds`` pages written become its SubIFDs."""
    handle = tif.filehandle

    def segments() -> Iterator[bytes]:
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            handle.seek(offset)
            yield handle.read(count)

    layout: dict[str, Any] = (
        {"tile": (page.tilelength, page.tilewidth)}
        if page.is_tiled
        else {"rowsperstrip": page.rowsperstrip}
    )
    resolution = _resolution(page)
    try:
        writer.write(
            segments(),
            shape=page.shape,
            dtype=page.dtype,
            photometric=page.photometric,
            planarconfig=page.planarconfig,
            extrasamples=page.extrasamples or None,
            bitspersample=page.bitspersample,
            compression=page.compression,
            predictor=page.predictor if page.predictor != 1 else None,
            subsampling=page.subsampling if page.photometric in (2, 6) else None,
            compressionargs=_jpeg_colorspace(page),
            jpegtables=page.jpegtables,
            iccprofile=page.iccprofile,
            description=description or None,
            subfiletype=page.subfiletype,
            subifds=subifds or None,
            software=software or False,
            extratags=extratags or (),
            metadata=None,
            **resolution,
            **layout,
        )
    except Exception as err:
        raise DeidentificationError(f"cannot copy slide page {page.index}: {err}") from err


def _jpeg_colorspace(page: tifffile.TiffPage) -> dict[str, Any] | None:
    """Keep a JPEG page's PhotometricInterpretation: tifffile writes YCbCr by default, and
    Aperio's RGB-tagged JPEG tiles are decoded wrongly when retagged YCbCr."""
    if page.compression == 7 and page.photometric in (2, 6):
        return {"outcolorspace": int(page.photometric)}
    return None


def _resolution(page: tifffile.TiffPage) -> dict[str, Any]:
    """The page's resolution tags, when present, as TiffWriter arguments."""
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return {}
    unit = page.tags.get("ResolutionUnit")
    return {
        "resolution": (xres.value, yres.value),
        "resolutionunit": int(unit.value) if unit is not None else None,
    }

"""Which scanner wrote a whole-slide TIFF, where its main image is, what its optics were, and
which of its pages its own metadata names as label, macro, overview, thumbnail or map.

tifffile recognises each vendor's layout (``is_svs``, ``is_ndpi``, ``is_scn``, ``is_bif``,
``is_philips``, ``is_qpi``); this module reads the few facts mira needs from each vendor's metadata:

- Hamamatsu NDPI: X/YResolution in pixels per cm; tag 65421 the objective (-1 macro, -2 map).
- Leica SCN: XML in the first ImageDescription; a collection of images, the macro being the one
  whose view covers the whole collection (the glass); pixel size = view size (nm) / pixels.
- Ventana BIF: XMP (tag 700) ``iScan`` attributes ``ScanRes`` (µm/px) and ``Magnification``;
  pages described ``Label_Image``/``Label Image``, ``Thumbnail`` and ``Probability_Image``.
- Philips TIFF: DICOM attributes as XML in the ImageDescription; ``DICOM_PIXEL_SPACING`` in mm
  (row, column), one per level; pages described ``Macro`` and ``Label``.
- Akoya/PerkinElmer QPTIFF: XML per page (``ImageType`` FullResolution, ReducedResolution,
  Thumbnail, Overview, Label; ``Name`` the channel, ``Objective``); X/YResolution in cm.

Nothing here reads identifiers: names, dates, barcodes and paths are the de-identifier's business.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tifffile

MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: inch, centimetre
VENDOR_FLAGS = (
    ("is_svs", "aperio"),
    ("is_ndpi", "hamamatsu"),
    ("is_scn", "leica"),
    ("is_bif", "ventana"),
    ("is_philips", "philips"),
    ("is_qpi", "akoya"),
    ("is_ome", "ome"),
)
VENDOR_NAMES = {
    "aperio": "Aperio",
    "hamamatsu": "Hamamatsu",
    "leica": "Leica",
    "ventana": "Ventana",
    "philips": "Philips",
    "akoya": "Akoya",
}
NDPI_MAGNIFICATION = 65421
XMP = 700
_BIF_ASSOCIATED = {
    "Label_Image": "label",
    "Label Image": "label",
    "Thumbnail": "thumbnail",
    "Probability_Image": "thumbnail",
}
_QPI_ASSOCIATED = {"Thumbnail": "thumbnail", "Overview": "macro", "Label": "label"}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class VendorOptics:
    """Physical pixel size (µm at level 0), objective power and channel names, where known."""

    mpp_x: float | None = None
    mpp_y: float | None = None
    objective: float | None = None
    channels: tuple[str, ...] = ()


def slide_vendor(tif: tifffile.TiffFile) -> str:
    """``aperio``, ``hamamatsu``, ``leica``, ``ventana``, ``philips``, ``akoya``, ``ome`` or
    ``generic``."""
    first = tif.pages.first
    for flag, vendor in VENDOR_FLAGS:
        if getattr(first, flag, False):
            return vendor
    return "generic"


def vendor_optics(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> VendorOptics:
    """The optics of the slide whose level 0 is ``page``, from its vendor's own metadata."""
    vendor = slide_vendor(tif)
    if vendor == "hamamatsu":
        mpp_x, mpp_y = resolution_mpp(page)
        return VendorOptics(mpp_x, mpp_y, positive(page.tags.valueof(NDPI_MAGNIFICATION)))
    if vendor == "leica":
        return _scn_optics(tif.pages.first.description)
    if vendor == "ventana":
        return _bif_optics(tif)
    if vendor == "philips":
        return _philips_optics(tif.pages.first.description)
    if vendor == "akoya":
        return _qpi_optics(tif, page)
    mpp_x, mpp_y = resolution_mpp(page)
    return VendorOptics(mpp_x, mpp_y)


def main_series(tif: tifffile.TiffFile) -> tifffile.TiffPageSeries:
    """The series holding the slide's main image: the first, except in a Leica SCN, whose
    macro image may come first (it is the image covering the whole collection)."""
    if not tif.series:
        raise ValueError("no image series")
    if slide_vendor(tif) == "leica":
        macro_ifds = set(associated_pages(tif))
        for series in tif.series:
            if series.keyframe.index not in macro_ifds:
                return series
    return tif.series[0]


def associated_pages(tif: tifffile.TiffFile) -> dict[int, str]:
    """Main-chain page index -> ``label``/``macro``/``thumbnail``/``map``, for the pages the
    vendor's metadata names as associated images (never a pyramid level)."""
    vendor = slide_vendor(tif)
    named: dict[int, str] = {}
    for page in _pages(tif):
        description = page.description or ""
        if vendor == "hamamatsu":
            magnification = page.tags.valueof(NDPI_MAGNIFICATION)
            if magnification is not None and magnification <= 0:
                named[page.index] = "macro" if magnification == -1 else "map"
        elif vendor == "ventana" and description in _BIF_ASSOCIATED:
            named[page.index] = _BIF_ASSOCIATED[description]
        elif vendor == "philips" and description.startswith(("Macro", "Label")):
            named[page.index] = description[:5].lower()
        elif vendor == "akoya":
            kind = _qpi_field(description, "ImageType")
            if kind in _QPI_ASSOCIATED:
                named[page.index] = _QPI_ASSOCIATED[kind]
    if vendor == "leica":
        named.update(dict.fromkeys(_scn_macro_ifds(tif.pages.first.description), "macro"))
    return named


def _pages(tif: tifffile.TiffFile) -> Iterator[tifffile.TiffPage]:
    for page in tif.pages:
        if isinstance(page, tifffile.TiffPage):
            yield page


def _parse_xml(xml: str) -> ET.Element | None:
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None


def _local(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child) == name]


def scn_images(xml: str) -> Iterator[tuple[ET.Element, ET.Element, bool]]:
    """Each ``(collection, image, is_macro)`` of a Leica SCN description."""
    root = _parse_xml(xml)
    if root is None:
        return
    for collection in _children(root, "collection"):
        size = (collection.get("sizeX"), collection.get("sizeY"))
        for image in _children(collection, "image"):
            views = _children(image, "view")
            covers = bool(views) and (views[0].get("sizeX"), views[0].get("sizeY")) == size
            yield collection, image, covers


def _scn_macro_ifds(xml: str) -> list[int]:
    ifds = []
    for _, image, is_macro in scn_images(xml):
        if is_macro:
            for pixels in _children(image, "pixels"):
                ifds += [int(d.get("ifd", -1)) for d in _children(pixels, "dimension")]
    return ifds


def _scn_optics(xml: str) -> VendorOptics:
    for _, image, is_macro in scn_images(xml):
        if is_macro:
            continue
        pixels, views = _children(image, "pixels"), _children(image, "view")
        if not pixels or not views:
            continue
        full = [d for d in _children(pixels[0], "dimension") if d.get("r", "0") == "0"]
        width = positive(full[0].get("sizeX")) if full else None
        height = positive(full[0].get("sizeY")) if full else None
        view_x, view_y = positive(views[0].get("sizeX")), positive(views[0].get("sizeY"))
        mpp_x = view_x / width / 1000 if view_x and width else None
        mpp_y = view_y / height / 1000 if view_y and height else None
        objective = next((positive(e.text) for e in image.iter() if _local(e) == "objective"), None)
        return VendorOptics(mpp_x, mpp_y, objective)
    return VendorOptics()


def bif_iscan(tif: tifffile.TiffFile) -> dict[str, str]:
    """The attributes of the first ``iScan`` element in any page's XMP."""
    for page in _pages(tif):
        xmp = page.tags.valueof(XMP)
        if xmp is None:
            continue
        text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
        root = _parse_xml(text.strip("\0 \r\n"))
        if root is None:
            continue
        for element in root.iter():
            if _local(element) == "iScan":
                return dict(element.attrib)
    return {}


def _bif_optics(tif: tifffile.TiffFile) -> VendorOptics:
    iscan = bif_iscan(tif)
    mpp = positive(iscan.get("ScanRes"))
    return VendorOptics(mpp, mpp, positive(iscan.get("Magnification")))


def philips_spacings(xml: str) -> list[tuple[float, float]]:
    """Each level's ``DICOM_PIXEL_SPACING`` (row, column) in mm, largest level first."""
    root = _parse_xml(xml)
    if root is None:
        return []
    spacings = []
    for element in root.iter("Attribute"):
        if element.get("Name") == "DICOM_PIXEL_SPACING" and element.text:
            values = [positive(v) for v in element.text.replace('"', " ").split()]
            if len(values) == 2 and values[0] and values[1]:
                spacings.append((values[0], values[1]))
    return spacings


def _philips_optics(xml: str) -> VendorOptics:
    spacings = philips_spacings(xml)
    if not spacings:
        return VendorOptics()
    row, column = min(spacings)
    return VendorOptics(column * 1000, row * 1000)


def _qpi_field(xml: str, name: str) -> str | None:
    if "PerkinElmer-QPI-ImageDescription" not in xml[:512]:
        return None
    root = _parse_xml(xml)
    element = root.find(name) if root is not None else None
    return element.text.strip() if element is not None and element.text else None


def _qpi_optics(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> VendorOptics:
    mpp_x, mpp_y = resolution_mpp(page)
    objective_text = _qpi_field(page.description, "Objective") or ""
    match = _NUMBER.search(objective_text)
    channels = tuple(
        name
        for other in _pages(tif)
        if _qpi_field(other.description, "ImageType") == "FullResolution"
        and (name := _qpi_field(other.description, "Name"))
    )
    return VendorOptics(mpp_x, mpp_y, positive(match.group()) if match else None, channels)


def resolution_mpp(page: tifffile.TiffPage) -> tuple[float | None, float | None]:
    """Microns per pixel from X/YResolution, only when the unit is physical (inch or cm)."""
    microns = MICRONS_PER_UNIT.get(int(page.tags.valueof(296, 2)))
    if microns is None:
        return None, None
    mpp = []
    for tag in (282, 283):
        value = page.tags.valueof(tag)
        ratio = value[0] / value[1] if isinstance(value, tuple) and value[1] else value
        mpp.append(microns / float(ratio) if ratio else None)
    # tifffile writes 1 pixel/inch when no resolution is given: not a real measurement.
    if mpp[0] is not None and mpp[0] >= microns:
        return None, None
    return mpp[0], mpp[1]


def positive(value: Any) -> float | None:
    """``value`` as a finite positive float, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None

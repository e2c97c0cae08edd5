"""What a de-identified vendor slide keeps of its vendor's metadata, and the identifiers it had.

Each vendor's metadata is rebuilt from an allow-list, never filtered from the original: only what
conversion needs (pixel size, objective, level layout, channel names) and what keeps the file
recognisable as that vendor's (tifffile and OpenSlide detect the layout by it). Names, dates,
barcodes, serial numbers, computer names and file paths are never copied; they are collected
as identifiers so the PHI scan searches the output for them.

- NDPI: tags FileFormat (65420), Magnification (65421) and McuStarts (65426), Make and Model;
  not SlideLabel (65427), the serial number (65442), the comment block (65449) or DateTime.
- SCN: an XML with the collection's size and the main image's pixels, view and objective; not
  the collection's name, barcode, uuids, image names, creation dates or device.
- BIF: ``level=N mag=M quality=Q`` descriptions; an XMP with ``iScan`` ``ScanRes`` and
  ``Magnification`` only; not the barcode, unit number, dates, annotation or paths.
- Philips: a DataObject XML with the manufacturer and one ``DICOM_PIXEL_SPACING`` per level.
- QPTIFF: per page ``ImageType``, channel ``Name`` and ``Color``, ``Objective``; not SlideID,
  Barcode, ComputerName, ScanProfile, Identifier or ValidationCode.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import tifffile

from tasks.deid.identifiers import date_forms, is_searchable, value_tokens
from tasks.slide_vendors import (
    NDPI_MAGNIFICATION,
    XMP,
    bif_iscan,
    philips_spacings,
    scn_images,
)

NDPI_FILE_FORMAT, NDPI_MCU_STARTS = 65420, 65426
NDPI_IDENTIFYING = (65427, 65442, 65449)  # SlideLabel, ScannerSerialNumber, Comments
SCN_NAMESPACE = "http://www.leica-microsystems.com/scn/2010/10/01"
# The Software values vendors are recognised by (tifffile's is_bif, is_philips, is_qpi), with a
# version at most; anything else in the tag is dropped.
_SAFE_SOFTWARE = re.compile(
    r"(?:ScanOutputManager|Ventana[A-Za-z ]*|Philips DP|PerkinElmer-QPI)(?: v?[0-9][0-9.]*)?"
)
_SAFE_MODEL = re.compile(r"[A-Z][A-Z-]*[0-9][A-Z0-9-]{0,15}")  # a model number: C13220, C9600-12
_BIF_LEVEL = re.compile(r"level=(\d+) mag=([0-9.]+) quality=(\d+)")
_ISO_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_QPI_KEPT = ("DescriptionVersion", "AcquisitionSoftware", "ImageType", "Name", "Color", "Objective")
_QPI_SAFE = frozenset({*_QPI_KEPT, "IsUnmixedComponent", "ExposureTime", "SignalUnits"})
_PHILIPS_SAFE = frozenset(
    {
        "DICOM_MANUFACTURER",
        "DICOM_PIXEL_SPACING",
        "PIIM_PIXEL_DATA_REPRESENTATION_NUMBER",
        "PIM_DP_IMAGE_TYPE",
    }
)
_BIF_SAFE = frozenset({"ScanRes", "Magnification", "BuildVersion", "ScannerModel"})
ExtraTag = tuple[int, str, int, Any, bool]
_JPEG_SIGNATURES = {0xE0: b"JFIF\0", 0xEE: b"Adobe"}  # APP0, APP14: kept, they guide decoding


def safe_software(page: tifffile.TiffPage) -> str | None:
    """The Software tag when it is a product name and version only (vendors are detected by it)."""
    software = page.software.strip()
    return software if _SAFE_SOFTWARE.fullmatch(software) else None


def ndpi_strip(page: tifffile.TiffPage) -> tuple[int, int]:
    """(offset, byte count) of an NDPI level's single JPEG strip, from its own tags (tifffile
    replaces the page's segments with the restart intervals)."""
    offsets, counts = page.tags.valueof(273), page.tags.valueof(279)
    if not offsets or not counts or len(offsets) != 1:
        raise ValueError(f"NDPI page {page.index} is not one JPEG strip")
    return int(offsets[0]), int(counts[0])


def scrub_jpeg_header(jpeg: bytes) -> tuple[bytes, int]:
    """A JPEG without its comment and application segments, but for the JFIF and Adobe ones
    (they say how to decode the colours), and how many bytes went: a scanner may write the
    slide's label text or a path there. Everything from the start of scan on is kept as is."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("the NDPI strip is not a JPEG")
    kept, position = bytearray(jpeg[:2]), 2
    while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
        marker = jpeg[position + 1]
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            break
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        segment = jpeg[position : position + 2 + length]
        signature = _JPEG_SIGNATURES.get(marker)
        if marker != 0xFE and (
            not 0xE0 <= marker <= 0xEF or segment[4:].startswith(signature or b"\0")
        ):
            kept += segment
        position += 2 + length
    return bytes(kept) + jpeg[position:], position - len(kept)


def ndpi_tags(page: tifffile.TiffPage, shift: int = 0) -> list[ExtraTag]:
    """The NDPI tags a de-identified level keeps: its layout (McuStarts, moved back by the
    ``shift`` bytes scrubbed from the strip's header) and optics."""
    tags: list[ExtraTag] = [(271, "s", 0, "Hamamatsu", True), (NDPI_FILE_FORMAT, "I", 1, 1, True)]
    model = page.tags.valueof(272)
    if isinstance(model, str) and _SAFE_MODEL.fullmatch(model.strip()):
        tags.append((272, "s", 0, model.strip(), True))
    magnification = page.tags.valueof(NDPI_MAGNIFICATION)
    if magnification is not None:
        tags.append((NDPI_MAGNIFICATION, "f", 1, float(magnification), True))
    starts = page.tags.valueof(NDPI_MCU_STARTS)
    if starts is not None:
        tags.append((NDPI_MCU_STARTS, "I", len(starts), [int(s) - shift for s in starts], True))
    return tags


def scn_description(xml: str, levels: list[tifffile.TiffPage]) -> str:
    """The SCN XML for the kept main image, its levels at IFDs 0..n-1 in ``levels`` order."""
    for collection, image, is_macro in scn_images(xml):
        if is_macro:
            continue
        view = next((c for c in image if c.tag.endswith("view")), None)
        objective = next((e.text for e in image.iter() if e.tag.endswith("objective")), None)
        dims = "".join(
            f'<dimension sizeX="{p.imagewidth}" sizeY="{p.imagelength}" r="{r}" ifd="{r}"/>'
            for r, p in enumerate(levels)
        )
        view_xml = ""
        if view is not None:
            kept = " ".join(
                f"{k}={quoteattr(view.get(k, '0'))}"
                for k in ("sizeX", "sizeY", "offsetX", "offsetY")
            )
            view_xml = f"<view {kept}/>"
        settings = (
            f"<scanSettings><objectiveSettings><objective>{escape(objective.strip())}"
            "</objective></objectiveSettings></scanSettings>"
            if objective
            else ""
        )
        base = levels[0]
        return (
            f'<?xml version="1.0" encoding="utf-8"?>\n<scn xmlns="{SCN_NAMESPACE}">'
            f"<collection sizeX={quoteattr(collection.get('sizeX', '0'))} "
            f"sizeY={quoteattr(collection.get('sizeY', '0'))}><image>"
            f'<pixels sizeX="{base.imagewidth}" sizeY="{base.imagelength}">{dims}</pixels>'
            f"{view_xml}{settings}</image></collection></scn>"
        )
    return ""


def bif_description(page: tifffile.TiffPage) -> str:
    """``level=N mag=M quality=Q`` from a BIF level's description, nothing else."""
    match = _BIF_LEVEL.search(page.description or "")
    return match.group(0) if match else ""


def bif_xmp(tif: tifffile.TiffFile) -> list[ExtraTag]:
    """The XMP a de-identified BIF keeps: ``iScan`` with its pixel size and magnification."""
    iscan = bif_iscan(tif)
    kept = " ".join(
        f"{key}={quoteattr(iscan[key])}" for key in ("ScanRes", "Magnification") if key in iscan
    )
    xmp = f'<?xml version="1.0" encoding="utf-8"?><Metadata><iScan {kept}/></Metadata>'
    return [(XMP, "B", 0, xmp.encode(), True)]


def philips_description(xml: str, levels: list[tifffile.TiffPage]) -> str:
    """A Philips DataObject with the manufacturer and each kept level's pixel spacing (mm)."""
    spacings = philips_spacings(xml)
    if not spacings:
        return ""
    row, column = min(spacings)
    base = levels[0]

    def attribute(name: str, value: str, kind: str) -> str:
        return f'<Attribute Name="{name}" PMSVR="{kind}">{value}</Attribute>'

    representations = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        + attribute(
            "DICOM_PIXEL_SPACING",
            f'"{row * base.imagelength / p.imagelength:.9g}" '
            f'"{column * base.imagewidth / p.imagewidth:.9g}"',
            "IDoubleArray",
        )
        + attribute("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", str(r), "IUInt32")
        + "</DataObject>"
        for r, p in enumerate(levels)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        + attribute("DICOM_MANUFACTURER", "PHILIPS", "IString")
        + '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>'
        '<DataObject ObjectType="DPScannedImage">'
        + attribute("PIM_DP_IMAGE_TYPE", "WSI", "IString")
        + '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        f"<Array>{representations}</Array></Attribute></DataObject></Array></Attribute>"
        "</DataObject>"
    )


def qpi_description(page: tifffile.TiffPage) -> str:
    """A QPTIFF page's XML with only its image type, channel name and colour, and objective."""
    root = _xml(page.description or "")
    if root is None:
        return ""
    kept = "".join(
        f"<{name}>{escape(element.text.strip())}</{name}>"
        for name in _QPI_KEPT
        if (element := root.find(name)) is not None and element.text
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f"<PerkinElmer-QPI-ImageDescription>{kept}</PerkinElmer-QPI-ImageDescription>"
    )


def qpi_thumbnail_description(page: tifffile.TiffPage) -> str:
    """The XML of a rebuilt QPTIFF thumbnail: its image type, and the source page's objective."""
    root = _xml(page.description or "")
    objective = root.find("Objective") if root is not None else None
    kept = (
        f"<Objective>{escape(objective.text.strip())}</Objective>"
        if objective is not None and objective.text
        else ""
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>'
        f"<ImageType>Thumbnail</ImageType>{kept}</PerkinElmer-QPI-ImageDescription>"
    )


def vendor_identifiers(tif: tifffile.TiffFile, vendor: str) -> set[str]:
    """Identifier tokens in a vendor's metadata (for the PHI scan of the output)."""
    tokens: set[str] = set()
    for text in _identifying_texts(tif, vendor):
        tokens |= text_tokens(text)
    return tokens


def _identifying_texts(tif: tifffile.TiffFile, vendor: str) -> Iterator[str]:
    pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
    if vendor == "hamamatsu":
        for page in pages:
            for code in NDPI_IDENTIFYING:
                value = page.tags.valueof(code)
                if isinstance(value, str):
                    yield from _ini_values(value) if code == 65449 else (value,)
    elif vendor == "leica":
        root = _xml(tif.pages.first.description or "")
        for element in root.iter() if root is not None else ():
            if element.tag.endswith(("barcode", "creationDate")) and element.text:
                yield element.text
                yield _base64_text(element.text)
            for key in ("name", "uuid"):
                if element.get(key):
                    yield str(element.get(key))
    elif vendor == "ventana":
        yield from (v for k, v in bif_iscan(tif).items() if k not in _BIF_SAFE)
        for page in pages:
            root = _xml(_xmp_text(page))
            for element in root.iter() if root is not None else ():
                yield from (v for k, v in element.attrib.items() if k not in _BIF_SAFE)
    elif vendor == "philips":
        root = _xml(tif.pages.first.description or "")
        for element in root.iter("Attribute") if root is not None else ():
            if element.get("Name") not in _PHILIPS_SAFE and element.text and element.text.strip():
                yield element.text.strip().strip('"')
                yield _base64_text(element.text.strip())
    elif vendor == "akoya":
        for page in pages:
            root = _xml(page.description or "")
            for element in root if root is not None else ():
                if element.tag not in _QPI_SAFE and element.text and element.text.strip():
                    yield element.text.strip()


def text_tokens(text: str) -> set[str]:
    """A metadata value, its parts (split on separators) and any date in it, in every form."""
    tokens = set(value_tokens("LO", text))
    tokens |= {part for part in re.split(r"[\\/_\s^,;:]+", text) if is_searchable(part)}
    for match in _ISO_DATE.finditer(text):
        tokens |= date_forms("".join(match.groups()))
    return {token for token in tokens if is_searchable(token)}


def _ini_values(text: str) -> Iterator[str]:
    for line in text.splitlines():
        _, separator, value = line.partition("=")
        if separator and value.strip():
            yield value.strip()


def _base64_text(text: str) -> str:
    try:
        return base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def _xmp_text(page: tifffile.TiffPage) -> str:
    xmp = page.tags.valueof(XMP)
    if xmp is None:
        return ""
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    return text.strip("\0 \r\n")


def _xml(text: str) -> ElementTree.Element | None:
    try:
        return ElementTree.fromstring(text) if text.lstrip().startswith("<") else None
    except ElementTree.ParseError:
        return None

"""DICOM header checks for ingest: parse without pixels, catch truncation, require the key UIDs.

The header is read with ``stop_before_pixels`` and values above ``DEFER_BYTES`` are skipped, so
only a few kilobytes of a large object are fetched. Truncation is judged from element lengths:
the pixel data's declared length (or each fragment's, when encapsulated) and whatever follows it
must fit in the file, which catches a cut mid-pixel-data without decoding a single pixel.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from storage.base import read_up_to
from tasks.ingest.bombs import check_inflated_size
from tasks.ingest.inspection import (
    DEFAULT_MAX_DECODED_BYTES,
    DetectedFormat,
    DicomHeader,
    RejectedObject,
)

META_START = 132  # the file meta information follows the 128-byte preamble and "DICM"
FILE_META_GROUP = 0x0002
TRANSFER_SYNTAX_TAG = 0x00020010
MAX_UID_BYTES = 64
TRUNCATION_SIGNS = ("truncated", "end of file", "unpack requires a buffer", "no tag to read")
DEFER_BYTES = 64 * 1024  # header values above this are skipped, not read (overlays, private blobs)
REQUIRED_DICOM = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
)
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_LENGTH_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC"})
TRANSFER_SYNTAX_BY_ENCODING = {  # (implicit VR, little endian) of a data set without file meta
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}


def inspect_dicom(
    stream: BinaryIO,
    size: int,
    detected: DetectedFormat,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DicomHeader:
    """Parse the header up to the pixel data, check truncation and the attributes we rely on.

    A deflated data set is inflated by the parser as a whole, so its inflated size is counted
    first and held to ``max_decoded_bytes``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value; verdicts come below
        if detected == "dicom":
            data_start, transfer_syntax = _check_file_meta(stream, size)
            if transfer_syntax == DeflatedExplicitVRLittleEndian:
                check_inflated_size(stream, data_start, max_decoded_bytes)
        ds = _read_header(stream, detected, stop_before_pixels=True)
        if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # offsets inside a deflated data set refer to the inflated bytes; inflating the whole
            # object (within the ceiling checked above) is the only structure check
            full = _read_header(stream, detected, stop_before_pixels=False)
            has_pixels = any(tag in full for tag in PIXEL_TAGS)
        else:
            header_end = stream.tell()  # where the parser stopped: the pixel data, if any
            _check_header_complete(ds, size)
            has_pixels = _check_structure(stream, ds, size, header_end)
        return _dicom_header(ds, has_pixels)


def _read_header(stream: BinaryIO, detected: DetectedFormat, *, stop_before_pixels: bool) -> Any:
    stream.seek(0)
    try:
        ds = pydicom.dcmread(
            stream, stop_before_pixels=stop_before_pixels, force=True, defer_size=DEFER_BYTES
        )
    except Exception as err:
        if detected == "dicom-no-preamble":
            raise RejectedObject(
                "unsupported-type", "starts like DICOM but does not parse"
            ) from err
        if _is_truncation(err):
            raise RejectedObject("truncated", f"the file ends early: {err}") from err
        raise
    if detected == "dicom-no-preamble" and not any(el.tag.group == 0x0008 for el in ds.elements()):
        raise RejectedObject("unsupported-type", "starts like DICOM but holds no DICOM attributes")
    return ds


def _check_file_meta(stream: BinaryIO, size: int) -> tuple[int, str]:
    """Walk the file meta information (group 0002, after the preamble) element by element: a
    file that ends inside it, or right after it with no data set, is cut. Returns where the
    data set starts and its transfer syntax ("" when the meta does not say)."""
    layout = _Layout(size, implicit=False, order="<")
    position, transfer_syntax = META_START, ""
    while (header := _element_header(stream, position, layout)) is not None:
        tag, length, header_length = header
        if tag >> 16 != FILE_META_GROUP or length == UNDEFINED_LENGTH:
            return position, transfer_syntax  # (odd meta is left to the parser to judge)
        if tag == TRANSFER_SYNTAX_TAG and length <= MAX_UID_BYTES:
            stream.seek(position + header_length)
            transfer_syntax = read_up_to(stream, length).decode("ascii", "replace").strip("\0 ")
        position += header_length + length
        if position > size:
            raise RejectedObject(
                "truncated", f"the {size}-byte file ends inside its file meta information"
            )
    raise RejectedObject(
        "truncated", f"the {size}-byte file ends after its file meta information, before any data"
    )


def _is_truncation(err: Exception) -> bool:
    """Whether pydicom failed for want of bytes: at the end of the file, inside an element
    header (a short ``struct`` read) or inside a sequence item ("no tag to read")."""
    text = str(err).lower()
    return isinstance(err, EOFError) or any(sign in text for sign in TRUNCATION_SIGNS)


def _raw_elements(ds: pydicom.Dataset) -> Iterator[Any]:
    """The top-level elements as parsed, deferred values left unread: reading one would fetch
    a large value for nothing and move the stream the structure checks walk."""
    for tag in sorted(ds.keys()):
        yield ds.get_item(tag, keep_deferred=True)


def _check_header_complete(ds: pydicom.Dataset, size: int) -> None:
    """Every top-level header value must lie inside the file (pydicom reads short values quietly)."""
    for element in _raw_elements(ds):
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        if element.value_tell + element.length > size:
            raise RejectedObject(
                "truncated",
                f"header element {element.tag} declares {element.length} bytes at offset "
                f"{element.value_tell}, past the end of the {size}-byte file",
            )


@dataclass(frozen=True)
class _Layout:
    """Where and how a data set's elements are encoded in the file."""

    size: int
    implicit: bool
    order: str  # struct byte order: "<" or ">"


def _check_structure(stream: BinaryIO, ds: pydicom.Dataset, size: int, header_end: int) -> bool:
    """Check that the file ends where its last element says it does; True when it has pixels.

    The pixel data's declared length (or its fragments, for encapsulated data) must fit in the
    file, and so must whatever follows it: a cut anywhere after the header is caught this way,
    reading a few bytes per element and never the pixel values themselves.
    """
    implicit, little = _encoding(ds)
    layout = _Layout(size, implicit, "<" if little else ">")
    header = _element_header(stream, header_end, layout)
    if header is not None and header[0] in PIXEL_TAGS:
        _check_elements_from(stream, header_end, layout)
        return True
    last = max(_raw_elements(ds), key=_value_tell, default=None)
    if isinstance(last, RawDataElement) and last.length != UNDEFINED_LENGTH:
        _check_elements_from(stream, last.value_tell + last.length, layout)
    elif getattr(last, "is_undefined_length", False):
        _check_ends_with_delimiter(stream, layout)
    return False


def _value_tell(element: Any) -> int:
    return int(getattr(element, "value_tell", None) or getattr(element, "file_tell", None) or 0)


def _element_header(
    stream: BinaryIO, position: int, layout: _Layout
) -> tuple[int, int, int] | None:
    """(tag, value length, header length) of the element at ``position``; None at end of file."""
    stream.seek(position)
    head = read_up_to(stream, 12)
    if not head:
        return None
    if len(head) < 8:
        raise RejectedObject("truncated", f"the file ends inside an element header at {position}")
    group, element = struct.unpack_from(f"{layout.order}HH", head)
    tag = group << 16 | element
    if layout.implicit or tag >> 16 == 0xFFFE or not _is_vr(head[4:6]):
        # items and delimiters have no VR; some writers switch to implicit VR for pixels
        return tag, struct.unpack_from(f"{layout.order}L", head, 4)[0], 8
    if head[4:6] not in LONG_LENGTH_VRS:
        return tag, struct.unpack_from(f"{layout.order}H", head, 6)[0], 8
    if len(head) < 12:
        raise RejectedObject("truncated", f"the file ends inside an element header at {position}")
    return tag, struct.unpack_from(f"{layout.order}L", head, 8)[0], 12


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and code.isalpha() and code.isupper()


def _check_elements_from(stream: BinaryIO, position: int, layout: _Layout) -> None:
    """Walk top-level element headers from ``position``; the last one must end at end of file."""
    while (header := _element_header(stream, position, layout)) is not None:
        tag, length, header_length = header
        if length == UNDEFINED_LENGTH:
            if tag in PIXEL_TAGS:
                position = _fragments_end(stream, position + header_length, layout)
                continue
            _check_ends_with_delimiter(stream, layout)
            return
        position += header_length + length
        if position > layout.size:
            raise RejectedObject(
                "truncated",
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes but the "
                f"{layout.size}-byte file ends {layout.size - position + length} bytes into it",
            )


def _fragments_end(stream: BinaryIO, position: int, layout: _Layout) -> int:
    """Walk encapsulated pixel data item by item (headers only); returns where it ends."""
    while True:
        header = _element_header(stream, position, layout)
        if header is None:
            raise RejectedObject(
                "truncated", "encapsulated PixelData ends without a sequence delimiter"
            )
        tag, length, _ = header
        if tag == SEQUENCE_DELIMITER_TAG:
            return position + 8
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH:
            raise RejectedObject(
                "unreadable", f"unexpected tag {tag:08X} in encapsulated PixelData at {position}"
            )
        position += 8 + length
        if position > layout.size:
            raise RejectedObject(
                "truncated",
                f"a PixelData fragment of {length} bytes runs past the end of the "
                f"{layout.size}-byte file",
            )


def _check_ends_with_delimiter(stream: BinaryIO, layout: _Layout) -> None:
    """A data set whose last element has undefined length must end with its delimiter."""
    delimiter = struct.pack(f"{layout.order}HHL", 0xFFFE, 0xE0DD, 0)
    stream.seek(max(0, layout.size - len(delimiter)))
    if read_up_to(stream, len(delimiter)) != delimiter:
        raise RejectedObject(
            "truncated", "the last element has undefined length and no closing delimiter"
        )


def _dicom_header(ds: pydicom.Dataset, has_pixels: bool) -> DicomHeader:
    values = {keyword: _text(ds.get(keyword)) for keyword in REQUIRED_DICOM}
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        _check_not_cut_before(ds, missing)
        raise RejectedObject(
            "missing-attribute", f"required attribute(s) absent: {', '.join(missing)}"
        )
    is_image = "Image Storage" in UID(values["SOPClassUID"]).name
    if is_image and not has_pixels:
        _check_not_cut_before(ds, ["PixelData"])
        raise RejectedObject("missing-attribute", "PixelData absent from an image SOP class")
    rows, columns = _positive_int(ds.get("Rows")), _positive_int(ds.get("Columns"))
    if (is_image or has_pixels) and (rows is None or columns is None):
        raise RejectedObject("missing-attribute", "image without positive Rows and Columns")
    transfer_syntax = _text(ds.file_meta.get("TransferSyntaxUID"))
    return DicomHeader(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        patient_id=_text(ds.get("PatientID")),
        modality=values["Modality"],
        rows=rows if has_pixels else None,
        columns=columns if has_pixels else None,
        frames=(_positive_int(ds.get("NumberOfFrames")) or 1) if has_pixels else None,
        transfer_syntax=transfer_syntax or TRANSFER_SYNTAX_BY_ENCODING[_encoding(ds)],
        burned_in_annotation=_text(ds.get("BurnedInAnnotation")) or None,
    )


def _check_not_cut_before(ds: pydicom.Dataset, missing: list[str]) -> None:
    """Elements are stored in tag order, so a data set that ends before the place of an absent
    attribute may simply have been cut there (at an element boundary): call that truncated."""
    last = max(ds.keys(), default=None)
    after_end = [keyword for keyword in missing if last is None or tag_for_keyword(keyword) > last]
    if after_end:
        end = "holds no element" if last is None else f"ends with element {Tag(last)}"
        raise RejectedObject(
            "truncated",
            f"the data set {end}, before where {', '.join(after_end)} belongs: the file is cut",
        )


def _encoding(ds: pydicom.Dataset) -> tuple[bool, bool]:
    implicit, little = ds.original_encoding
    return bool(implicit), bool(little)


def _text(value: object) -> str:
    """A DICOM value as a stripped string ('' when absent); multi-values joined by backslash."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip().rstrip("\0")


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value)) if value not in (None, "") else 0
    except ValueError:
        return None
    return number if number > 0 else None

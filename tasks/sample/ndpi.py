"""Hamamatsu NDPI files written the way NanoZoomer scanners lay them out, for samples and tests.

An NDPI is a little-endian classic TIFF whose offsets are widened to 64 bits: the header holds an
8-byte first-IFD offset, and every IFD is followed by an 8-byte next-IFD offset and then the high
32 bits of each of its 12-byte entries' value fields (zero below 4 GiB, so a classic TIFF reader
still follows the chain). Each pyramid level is one JPEG in one strip, encoded with restart
markers; tag 65426 (McuStarts) lists where each restart interval's data starts in that strip, so
readers cut the level into small tiles without decoding it whole. Hamamatsu's private tags:
65420 FileFormat, 65421 Magnification (the objective; -1 on the macro photograph of the glass),
65422/65423 the offset from the slide centre (nm), 65427 SlideLabel (the label's text: a name or
case number), 65442 the scanner serial number and 65449 a key=value comment block.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from numpy.typing import NDArray

ASCII, SHORT, LONG, RATIONAL, SLONG, FLOAT = 2, 3, 4, 5, 9, 11
JPEG_COMPRESSION = 7
RGB = 2
CENTIMETER = 3
MCU = 8  # pixels on a side of a 4:4:4 JPEG's minimum coded unit
RESTART_MCUS = 8  # restart interval at most, in MCUs; it divides a row of MCUs, as readers need
MACRO_MAGNIFICATION = -1.0


@dataclass(frozen=True)
class NdpiIdentity:
    """What a scanner writes that identifies a patient, a case or a scanner."""

    slide_label: str = "S24-01234 DOE^JOHN"
    serial_number: str = "SN-770122"
    scanned: dt.datetime = dt.datetime(2024, 3, 14, 9, 26, 53)
    reference: str = r"C:\NDP\Scans\DOE_JOHN_S24-01234.ndpi"


@dataclass(frozen=True)
class NdpiSlide:
    """The pixels to write: the pyramid (largest first), the macro photograph and the optics."""

    levels: tuple[NDArray[np.uint8], ...]
    macro: NDArray[np.uint8]
    mpp: float
    magnification: float = 20.0
    identity: NdpiIdentity = field(default_factory=NdpiIdentity)
    quality: int = 90


def restart_jpeg(
    rgb: NDArray[np.uint8], quality: int, restarts: bool = True
) -> tuple[bytes, list[int]]:
    """``rgb`` as a baseline JPEG (4:4:4) with restart markers every few MCUs (a whole number
    of intervals per MCU row), and the offsets where each interval's entropy-coded data starts."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    across = -(-rgb.shape[1] // MCU)
    interval = max(n for n in range(1, RESTART_MCUS + 1) if across % n == 0) if restarts else 0
    params = [
        *(cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, interval),
        *(cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    ]
    ok, encoded = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    data = encoded.tobytes()
    starts = [_scan_start(data)]
    position = starts[0]
    while (marker := data.find(b"\xff", position)) >= 0 and marker + 1 < len(data):
        code = data[marker + 1]
        if 0xD0 <= code <= 0xD7:
            starts.append(marker + 2)
        position = marker + 2
    return data, starts


def _scan_start(data: bytes) -> int:
    """The offset just past the JPEG's start-of-scan header."""
    position = 2
    while position < len(data):
        marker, length = struct.unpack_from(">HH", data, position)
        if marker == 0xFFDA:
            return position + 2 + length
        position += 2 + length
    raise ValueError("JPEG without a start of scan")


def write_ndpi(path: Path, slide: NdpiSlide) -> Path:
    """Write ``slide`` as an NDPI at ``path``: one page per level, then the macro."""
    pages: list[tuple[NDArray[np.uint8], float, bool]] = [
        (level, slide.magnification, True) for level in slide.levels
    ]
    pages.append((slide.macro, MACRO_MAGNIFICATION, False))
    with path.open("wb") as out:
        out.write(b"II" + struct.pack("<HQ", 42, 0))
        link = 4  # where the previous IFD's (or the header's) next-IFD offset is
        for pixels, magnification, restarts in pages:
            factor = slide.levels[0].shape[1] / pixels.shape[1] if restarts else None
            jpeg, starts = restart_jpeg(pixels, slide.quality, restarts)
            strip = _tell_even(out)
            out.write(jpeg)
            tags = _page_tags(slide, pixels, magnification, factor, strip, len(jpeg))
            if restarts:
                tags.append((65426, LONG, starts))
            ifd = _write_ifd(out, tags)
            out.seek(link)
            out.write(struct.pack("<Q", ifd))
            out.seek(0, 2)
            link = ifd + 2 + 12 * len(tags)
    return path


def _tell_even(out: BinaryIO) -> int:
    """The current offset, moved to a word boundary as TIFF wants."""
    position = out.tell()
    if position % 2:
        out.write(b"\0")
        position += 1
    return position


Tag = tuple[int, int, object]


def _page_tags(
    slide: NdpiSlide,
    pixels: NDArray[np.uint8],
    magnification: float,
    factor: float | None,
    strip: int,
    size: int,
) -> list[Tag]:
    height, width = pixels.shape[:2]
    identity = slide.identity
    per_cm = 1e4 / (slide.mpp * (factor or 1.0)) if factor else 1e4 / (slide.mpp * 64)
    comments = (
        f"[Hamamatsu]\r\nReference={identity.reference}\r\n"
        f"Created={identity.scanned:%Y/%m/%d %H:%M:%S}\r\nNDP.S={identity.serial_number}\r\n"
    )
    return [
        (256, LONG, [width]),
        (257, LONG, [height]),
        (258, SHORT, [8, 8, 8]),
        (259, SHORT, [JPEG_COMPRESSION]),
        (262, SHORT, [RGB]),
        (271, ASCII, "Hamamatsu"),
        (272, ASCII, "C13220"),
        (273, LONG, [strip]),
        (277, SHORT, [3]),
        (278, LONG, [height]),
        (279, LONG, [size]),
        (282, RATIONAL, [round(per_cm * 1000), 1000]),
        (283, RATIONAL, [round(per_cm * 1000), 1000]),
        (296, SHORT, [CENTIMETER]),
        (305, ASCII, "NDP.scan 3.3.0"),
        (306, ASCII, f"{identity.scanned:%Y:%m:%d %H:%M:%S}"),
        (65420, LONG, [1]),
        (65421, FLOAT, [magnification]),
        (65422, SLONG, [-1250000]),
        (65423, SLONG, [830000]),
        (65424, SLONG, [0]),
        (65427, ASCII, identity.slide_label),
        (65442, ASCII, identity.serial_number),
        (65449, ASCII, comments),
    ]


_FORMATS = {SHORT: "H", LONG: "I", RATIONAL: "I", SLONG: "i", FLOAT: "f"}


def _write_ifd(out: BinaryIO, tags: list[Tag]) -> int:
    """Write the out-of-line values, then the IFD (entries, next offset, high words)."""
    entries = []
    for code, kind, value in sorted(tags, key=lambda tag: tag[0]):
        if kind == ASCII:
            data = str(value).encode("latin-1") + b"\0"
            count = len(data)
        else:
            values = list(value)  # type: ignore[call-overload]
            data = struct.pack(f"<{len(values)}{_FORMATS[kind]}", *values)
            count = len(values) // 2 if kind == RATIONAL else len(values)
        if len(data) <= 4:
            field_bytes = data.ljust(4, b"\0")
        else:
            where = _tell_even(out)
            out.write(data)
            field_bytes = struct.pack("<I", where)
        entries.append(struct.pack("<HHI", code, kind, count) + field_bytes)
    ifd = _tell_even(out)
    out.write(struct.pack("<H", len(entries)) + b"".join(entries))
    out.write(struct.pack("<Q", 0) + b"\0" * (4 * len(entries)))
    return ifd

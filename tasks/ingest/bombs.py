"""Decompression bombs: decoded sizes checked before anything is decoded.

A few hundred kilobytes can claim gigabytes once decoded: a JPEG tile whose frame header says
60000 x 60000 pixels, a deflated DICOM data set of zeros. Ingest decodes one slide tile and
inflates deflated DICOM to check them, so each is held to two bounds first: the size the file
itself declares (the TIFF's tile geometry) and ``max_decoded_bytes``, the ceiling one check may
decode (``MIRA_INGEST_MAX_DECODED_BYTES``). A file over either is refused as
``decompression-bomb``; inflation is streamed and counted, never held.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, BinaryIO

from tasks.ingest.inspection import RejectedObject

READ_BYTES = 1024 * 1024
INFLATE_BYTES = 4 * 1024 * 1024  # inflated bytes per step: memory stays at a few MiB
JPEG_CODECS = frozenset({6, 7, 33007, 34892})
JPEG2000_CODECS = frozenset({33003, 33004, 33005, 34712})
PNG_CODEC = 34933
WEBP_CODEC = 50001
# Codecs whose decoder sizes its output from the code stream, and whose header mira does not read
UNCHECKED_CODECS = {22610: "JPEG XR", 34934: "JPEG XR", 50002: "JPEG XL", 52546: "JPEG XL"}
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI, EOI
MAX_COMPONENTS = 4


def check_tile_geometry(page: Any, max_decoded_bytes: int) -> None:
    """The tiles a TIFF page declares must each decode within the ceiling."""
    declared = math.prod(int(n) for n in page.chunks) * int(page.dtype.itemsize)
    if declared > max_decoded_bytes:
        raise RejectedObject(
            "decompression-bomb",
            f"each tile of level 0 ({'x'.join(str(n) for n in page.chunks)} samples) decodes "
            f"to {declared} bytes, over the ceiling of {max_decoded_bytes} bytes",
        )
    if int(page.compression) in UNCHECKED_CODECS:
        raise RejectedObject(
            "unsupported-type",
            f"{UNCHECKED_CODECS[int(page.compression)]} tiles: their decoded size cannot be "
            "checked before decoding",
        )


def check_tile_stream(page: Any, data: bytes, index: int) -> None:
    """A tile's code stream must not describe a larger image than the TIFF's tile."""
    compression = int(page.compression)
    if compression in JPEG_CODECS:
        width, height, components = _jpeg_frame(data, page)
        codec = "JPEG"
    elif compression in JPEG2000_CODECS:
        width, height, components = _jpeg2000_size(data)
        codec = "JPEG 2000"
    elif compression == PNG_CODEC:
        width, height, components, codec = *_png_size(data), 4, "PNG"
    elif compression == WEBP_CODEC:
        width, height, components, codec = *_webp_size(data), 4, "WebP"
    else:
        return  # tifffile decodes these into a buffer of the declared tile size
    tile_width, tile_height = int(page.tilewidth), int(page.tilelength)
    if width > tile_width or height > tile_height or components > MAX_COMPONENTS:
        raise RejectedObject(
            "decompression-bomb",
            f"tile {index} of level 0 declares {width}x{height} pixels with {components} "
            f"components in its {codec} header, in a TIFF of {tile_width}x{tile_height} tiles",
        )


def check_inflated_size(stream: BinaryIO, start: int, max_decoded_bytes: int) -> int:
    """Inflate a deflated DICOM data set from ``start`` to count its bytes, a few MiB at a time;
    refuses it over the ceiling and when the deflate stream is cut. Returns the inflated size."""
    stream.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    while not inflater.eof:
        compressed = inflater.unconsumed_tail or stream.read(READ_BYTES)
        if not compressed:
            break
        inflated += len(inflater.decompress(compressed, INFLATE_BYTES))
        if inflated > max_decoded_bytes:
            raise RejectedObject(
                "decompression-bomb",
                f"the deflated data set inflates to more than the ceiling of "
                f"{max_decoded_bytes} bytes",
            )
    inflated += len(inflater.flush())
    if not inflater.eof:
        raise RejectedObject("truncated", "the deflated data set ends before its end marker")
    return inflated


def _jpeg_frame(data: bytes, page: Any) -> tuple[int, int, int]:
    """(width, height, components) of the JPEG frame header, in the tile or in its tables."""
    for source in (data, getattr(page, "jpegheader", None), page.jpegtables):
        frame = _find_jpeg_frame(bytes(source)) if source else None
        if frame is not None:
            return frame
    raise RejectedObject("unreadable", "a level-0 tile has no JPEG frame header")


def _find_jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """Walk the JPEG marker segments up to the frame header (SOFn)."""
    position = 2 if data[:2] == b"\xff\xd8" else 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in JPEG_FRAME_MARKERS:
            if position + 10 > len(data):
                return None
            height, width, components = struct.unpack_from(">HHB", data, position + 5)
            if height == 0:  # the height would come later, in a DNL segment
                raise RejectedObject("unreadable", "a JPEG tile without a height in its header")
            return width, height, components
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        position += 2 + length
    return None


def _jpeg2000_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from the SIZ segment of a JPEG 2000 code stream."""
    at = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ, also inside a JP2 file's jp2c box
    if at < 0 or at + 42 > len(data):
        raise RejectedObject("unreadable", "a level-0 tile has no JPEG 2000 size segment")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, at + 8)
    (components,) = struct.unpack_from(">H", data, at + 40)
    return xsiz - xosiz, ysiz - yosiz, components


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise RejectedObject("unreadable", "a level-0 tile is not a PNG image")
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        raise RejectedObject("unreadable", "a level-0 tile is not a WebP image")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    raise RejectedObject("unreadable", "a level-0 tile is not a WebP image")

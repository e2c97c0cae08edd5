"""Reading whole-slide TIFFs region by region: Aperio SVS, pyramidal TIFF/BigTIFF, OME-TIFF and
the vendors' TIFF layouts (Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips TIFF, Akoya QPTIFF;
:mod:`tasks.slide_vendors` finds their main image and optics).

Only the slide's full-resolution level is read; mira builds its own pyramid from it. A region is
read by fetching the raw bytes of the tiles (or strips) it touches, in file order, and decoding
each one: JPEG with libjpeg-turbo directly (``imagecodecs.jpeg8_decode`` with the page's shared
JPEG tables and the colour space tifffile would use; an NDPI level's segments are its restart
intervals, decoded behind the strip's JPEG header), everything else through tifffile's own
segment decoder. Pixels come out in chunks, interleaved as decoded: ``(y, x, channel)``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, cast

import imagecodecs
import numpy as np
import tifffile
from numpy.typing import NDArray

from mira.errors import InvalidInput
from storage import Store
from tasks.slide_vendors import (
    VENDOR_NAMES,
    main_series,
    positive,
    resolution_mpp,
    slide_vendor,
    vendor_optics,
)

Pixels = NDArray[Any]
JPEG = 7
SUPPORTED_DTYPES = ("uint8", "uint16")
# A remote slide is opened for its tags (scattered small reads); its tiles come by prefetch.
METADATA_BLOCK_BYTES = 256 * 1024
MERGE_GAP_BYTES = 64 * 1024  # segments this close in the file are fetched as one range
RangeFetch = Callable[[list[tuple[int, int]]], list[bytes]]  # (offset, size) ranges -> bytes
VENDOR_FORMATS = {
    "hamamatsu": "ndpi",
    "leica": "scn",
    "ventana": "bif",
    "philips": "philips-tiff",
    "akoya": "qptiff",
}
OME_UNITS_IN_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass(frozen=True)
class SlideMetadata:
    """What mira keeps of a slide's own metadata: physical and optical facts, never identifiers.

    Aperio descriptions also carry file names, dates, users and scanner ids; none of that is read.
    """

    format: str  # "aperio-svs", "ome-tiff", "tiff", "ndpi", "scn", "bif", "philips-tiff", "qptiff"
    vendor: str | None = None
    objective_power: float | None = None
    mpp_x: float | None = None  # microns per pixel at full resolution
    mpp_y: float | None = None
    channels: tuple[str, ...] = ()  # a multiplexed slide's channel names, in page order

    def record(self) -> dict[str, Any]:
        """The fields for the completion record (channel names only where there are some)."""
        fields = asdict(self)
        if self.channels:
            fields["channels"] = list(self.channels)
        else:
            del fields["channels"]
        return fields


@dataclass(frozen=True)
class SlideGeometry:
    """Size, pixel type and storage layout of the full-resolution level."""

    height: int
    width: int
    samples: int
    dtype: str
    segment_height: int  # tile (or strip) height in the file
    segment_width: int


@contextlib.contextmanager
def open_slide(store: Store, key: str) -> Iterator[tifffile.TiffFile]:
    """Open the TIFF at ``key``: from its file when the store is local, else streamed with a
    small read-ahead, for its tags (regions read their tiles with ``prefetch``)."""
    try:
        if store.is_local:
            with tifffile.TiffFile(store.filesystem_path(key)) as tif:
                yield tif
            return
        with (
            store.open_read(key, block_size=METADATA_BLOCK_BYTES) as stream,
            tifffile.TiffFile(stream) as tif,
        ):
            yield tif
    except tifffile.TiffFileError as err:
        raise InvalidInput(f"not a readable TIFF slide: {store.url_of(key)}: {err}") from err


@dataclass
class _OpenSlide:
    tif: tifffile.TiffFile
    close: Callable[[], None]
    users: int = 0


_SHARED: dict[tuple[str, str], _OpenSlide] = {}  # remote slides kept open in this process
_SHARED_LOCK = threading.Lock()
SHARED_SLIDES = 2  # unused open slides kept at most (the one converting, and the previous)


@contextlib.contextmanager
def shared_slide(store: Store, key: str, etag: str | None) -> Iterator[tifffile.TiffFile]:
    """``open_slide`` for the region tasks of one conversion. A remote slide is opened (its
    tags read, a few round trips) once per process and version and shared by the tasks, which
    read their tiles with ``prefetch``; its file handle is locked for any other read."""
    if store.is_local or not etag:
        with open_slide(store, key) as tif:
            yield tif
        return
    name = (store.url_of(key), etag)
    with _SHARED_LOCK:
        entry = _SHARED.get(name)
        if entry is None:
            stack = contextlib.ExitStack()
            tif = stack.enter_context(open_slide(store, key))
            main_series(tif)  # parse the series once, before threads share it
            tif.filehandle.set_lock(True)
            entry = _SHARED[name] = _OpenSlide(tif, stack.close)
        entry.users += 1
    try:
        yield entry.tif
    finally:
        with _SHARED_LOCK:
            entry.users -= 1
            for other in list(_SHARED):  # close unused slides beyond the few kept
                if len(_SHARED) <= SHARED_SLIDES:
                    break
                if _SHARED[other].users == 0:
                    _SHARED.pop(other).close()


def full_resolution_page(tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The page holding the main image's full resolution (the first series', but for a Leica
    SCN's macro), checked to be convertible."""
    if not tif.series:
        raise InvalidInput(f"no image series in {tif.filename}")
    level = main_series(tif).levels[0]
    page = level.keyframe
    if len(level.pages) != 1:
        raise InvalidInput(f"{tif.filename}: multi-plane series are not supported")
    if page.dtype is None or page.dtype.name not in SUPPORTED_DTYPES:
        raise InvalidInput(f"{tif.filename}: pixel type {page.dtype} is not supported")
    if page.samplesperpixel not in (1, 3) or (page.samplesperpixel > 1 and page.planarconfig != 1):
        raise InvalidInput(f"{tif.filename}: only grey or interleaved RGB slides are supported")
    if page.imagedepth != 1:
        raise InvalidInput(f"{tif.filename}: volumetric tiles are not supported")
    return page


def slide_geometry(page: tifffile.TiffPage) -> SlideGeometry:
    """The full-resolution level's size and the size of the segments it is stored in."""
    if page.is_tiled:
        segment = (page.tilelength, page.tilewidth)
    else:
        segment = (min(page.rowsperstrip or page.imagelength, page.imagelength), page.imagewidth)
    assert page.dtype is not None
    return SlideGeometry(
        height=page.imagelength,
        width=page.imagewidth,
        samples=page.samplesperpixel,
        dtype=page.dtype.name,
        segment_height=segment[0],
        segment_width=segment[1],
    )


def slide_metadata(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> SlideMetadata:
    """Microns per pixel, objective power and vendor, from whichever metadata the slide has."""
    if tif.is_svs:
        return _aperio_metadata(page.description)
    if tif.is_ome and tif.ome_metadata:
        return _ome_metadata(tif.ome_metadata)
    vendor = slide_vendor(tif)
    if vendor in VENDOR_FORMATS:
        optics = vendor_optics(tif, page)
        return SlideMetadata(
            VENDOR_FORMATS[vendor],
            VENDOR_NAMES[vendor],
            optics.objective,
            optics.mpp_x,
            optics.mpp_y,
            optics.channels if len(optics.channels) > 1 else (),
        )
    mpp_x, mpp_y = resolution_mpp(page)
    make = page.tags.valueof(271)  # the TIFF "Make" tag: the scanner's manufacturer
    return SlideMetadata("tiff", str(make).strip() or None if make else None, None, mpp_x, mpp_y)


def _aperio_metadata(description: str) -> SlideMetadata:
    """Only AppMag and MPP from the Aperio description; the rest of it may identify people."""
    try:
        fields = tifffile.tifffile.svs_description_metadata(description)
    except ValueError:
        fields = {}
    mpp = positive(fields.get("MPP"))
    return SlideMetadata("aperio-svs", "Aperio", positive(fields.get("AppMag")), mpp, mpp)


def _ome_metadata(xml: str) -> SlideMetadata:
    """PhysicalSizeX/Y (in microns), the objective's nominal magnification and manufacturer."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return SlideMetadata("ome-tiff")
    pixels = next(root.iter(_ome_tag(root, "Pixels")), None)
    mpp_x = mpp_y = None
    if pixels is not None:
        mpp_x = _ome_size(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
        mpp_y = _ome_size(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"))
    objective = next(root.iter(_ome_tag(root, "Objective")), None)
    power = vendor = None
    if objective is not None:
        power = positive(objective.get("NominalMagnification"))
        vendor = objective.get("Manufacturer") or None
    return SlideMetadata("ome-tiff", vendor, power, mpp_x, mpp_y or mpp_x)


def _ome_tag(root: ET.Element, name: str) -> str:
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return namespace + name


def _ome_size(value: str | None, unit: str | None) -> float | None:
    size = positive(value)
    factor = OME_UNITS_IN_MICRONS.get(unit or "µm")
    return size * factor if size is not None and factor is not None else None


class RegionReader:
    """Reads rectangular regions of one slide's full-resolution level, already cut into chunks.

    A region comes back chunk-major, ``(chunks_down, chunks_across, chunk, chunk, samples)``, so
    each chunk is contiguous, interleaved as decoded, and goes to the codec without a copy;
    outside the slide it is 0.
    """

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage) -> None:
        self._tif = tif
        self._page = page
        self.geometry = slide_geometry(page)
        self._decode = segment_decoder(page, self.geometry)
        g = self.geometry
        self._segments_across = math.ceil(g.width / g.segment_width)
        self._kept: dict[int, Pixels] = {}  # decoded segments a later window still needs
        self._stored: dict[int, bytes] = {}  # segments' stored bytes, read ahead by prefetch

    def prefetch(self, y0: int, x0: int, height: int, width: int, fetch: RangeFetch) -> None:
        """Read the stored bytes of every segment under the window in one round, for the
        windows inside it to decode: ``fetch`` gets the byte ranges (file-adjacent segments
        merged into one) and returns their bytes. From S3 that is one concurrent set of range
        GETs, where reading tile by tile through a stream fetches several times the slide.
        """
        page = self._page
        spans = sorted(
            (page.dataoffsets[i], page.databytecounts[i], i)
            for i in self._segments_in(y0, x0, height, width)
            if page.databytecounts[i] and i not in self._stored
        )
        groups: list[list[tuple[int, int, int]]] = []
        for span in spans:
            if groups:
                last_offset, last_count, _ = groups[-1][-1]
                if 0 <= span[0] - (last_offset + last_count) <= MERGE_GAP_BYTES:
                    groups[-1].append(span)
                    continue
            groups.append([span])
        ranges = [(g[0][0], g[-1][0] + g[-1][1] - g[0][0]) for g in groups]
        for group, (start, _), data in zip(groups, ranges, fetch(ranges), strict=True):
            view = memoryview(data)
            for offset, count, index in group:
                self._stored[index] = bytes(view[offset - start : offset - start + count])

    def chunks_shape(self, height: int, width: int, chunk: int) -> tuple[int, ...]:
        """The shape ``read_chunks`` returns for a region of ``height x width``."""
        return (-(-height // chunk), -(-width // chunk), chunk, chunk, self.geometry.samples)

    def read_chunks(
        self,
        y0: int,
        x0: int,
        height: int,
        width: int,
        chunk: int,
        pool: Executor | None = None,
        out: Pixels | None = None,
        keep_within: tuple[int, int, int, int] | None = None,
    ) -> Pixels:
        """Pixels ``[y0:y0+height, x0:x0+width]`` as zero-padded chunks of ``chunk`` px, in
        ``out`` when given (of ``chunks_shape`` and the slide's dtype; any contents).

        Segments are read in file order (few, large reads) and decoded on ``pool`` if given.
        ``keep_within`` (``y0, x0, y1, x1``) announces that windows in raster order will cover
        that area: a segment reaching past this window's right or bottom edge, inside it, is
        kept decoded for them and dropped once used up, so each segment is decoded once.
        """
        g = self.geometry
        shape = self.chunks_shape(height, width, chunk)
        window = (y0, x0, min(y0 + height, g.height), min(x0 + width, g.width))
        placed = self._segments_in(y0, x0, height, width)
        indices = [index for index in placed if index not in self._kept]
        counts = [self._page.databytecounts[i] for i in indices]
        # Decoded tiles cover every pixel unless the region ends inside a chunk (padding) or a
        # tile is missing: only then does the buffer need zeroing first.
        covered = height % chunk == 0 and width % chunk == 0 and all(counts)
        if out is not None:
            if out.shape != shape or out.dtype != np.dtype(g.dtype):
                raise ValueError(f"read_chunks needs out of {shape} {g.dtype}, not {out.shape}")
            chunks = out
            if not covered:
                chunks.fill(0)
        elif covered:
            chunks = np.empty(shape, dtype=g.dtype)
        else:
            chunks = np.zeros(shape, dtype=g.dtype)
        for index in [index for index in placed if index in self._kept]:
            self._place(self._kept[index], index, chunks, window)
            if not self._reaches_past(index, window, keep_within):
                del self._kept[index]

        def decode_into(item: tuple[bytes | None, int]) -> None:
            data, index = item
            if data:  # a missing segment stays 0, as tifffile fills it
                segment = self._decode(data, index)
                self._place(segment, index, chunks, window)
                if self._reaches_past(index, window, keep_within):
                    self._kept[index] = segment.copy()  # the decoder reuses its buffer

        segments = self._segments(indices)
        for _ in pool.map(decode_into, segments) if pool else map(decode_into, segments):
            pass
        return chunks

    def _segments(self, indices: list[int]) -> Iterator[tuple[bytes | None, int]]:
        """``(stored bytes, index)`` of each segment: prefetched, else read from the file in
        file order (few, large reads)."""
        missing = [index for index in indices if index not in self._stored]
        for index in indices:
            if index in self._stored:
                yield self._stored[index], index
        if missing:
            offsets = [self._page.dataoffsets[i] for i in missing]
            counts = [self._page.databytecounts[i] for i in missing]
            yield from cast(
                Iterator[tuple[bytes | None, int]],
                self._tif.filehandle.read_segments(offsets, counts, missing, sort=True),
            )

    def read_tile(self, y0: int, x0: int, height: int, width: int, out: Pixels) -> bytes:
        """The stored bytes of the one segment (tile) at ``(y0, x0)``, and its pixels inside
        ``height x width`` decoded into ``out`` (``(1, 1, tile, tile, samples)``, zero-padded).

        Empty bytes for a missing tile (its pixels are 0). For passthrough: chunks are tiles.
        """
        g = self.geometry
        if y0 % g.segment_height or x0 % g.segment_width or out.shape[-2] != g.segment_width:
            raise ValueError(f"read_tile: ({y0}, {x0}) is not one {g.segment_width} px tile")
        index = (y0 // g.segment_height) * self._segments_across + x0 // g.segment_width
        data: bytes | None = None
        if self._page.databytecounts[index]:
            data = next(self._segments([index]))[0]
        if not data or height < out.shape[-3] or width < out.shape[-2]:
            out.fill(0)
        if data:
            window = (y0, x0, min(y0 + height, g.height), min(x0 + width, g.width))
            self._place(self._decode(data, index), index, out, window)
        return bytes(data or b"")

    def _reaches_past(
        self,
        index: int,
        window: tuple[int, int, int, int],
        within: tuple[int, int, int, int] | None,
    ) -> bool:
        """Whether segment ``index`` has pixels inside ``within`` right of or below ``window``."""
        if within is None:
            return False
        g = self.geometry
        top = (index // self._segments_across) * g.segment_height
        left = (index % self._segments_across) * g.segment_width
        bottom = min(top + g.segment_height, within[2], g.height)
        right = min(left + g.segment_width, within[3], g.width)
        return bottom > window[2] or right > window[3]

    def _segments_in(self, y0: int, x0: int, height: int, width: int) -> list[int]:
        g = self.geometry
        rows = range(
            y0 // g.segment_height, (min(y0 + height, g.height) - 1) // g.segment_height + 1
        )
        cols = range(x0 // g.segment_width, (min(x0 + width, g.width) - 1) // g.segment_width + 1)
        return [r * self._segments_across + c for r in rows for c in cols]

    def _place(
        self, segment: Pixels, index: int, chunks: Pixels, window: tuple[int, int, int, int]
    ) -> None:
        """Copy the part of one decoded segment inside the window into the chunks it overlaps."""
        g, size = self.geometry, chunks.shape[2]
        y0, x0, y1, x1 = window
        top = (index // self._segments_across) * g.segment_height
        left = (index % self._segments_across) * g.segment_width
        ys, ye = max(top, y0), min(top + segment.shape[0], y1)
        xs, xe = max(left, x0), min(left + segment.shape[1], x1)
        for cy in range((ys - y0) // size, (ye - 1 - y0) // size + 1):
            cys, cye = max(ys, y0 + cy * size), min(ye, y0 + (cy + 1) * size)
            for cx in range((xs - x0) // size, (xe - 1 - x0) // size + 1):
                cxs, cxe = max(xs, x0 + cx * size), min(xe, x0 + (cx + 1) * size)
                part = segment[cys - top : cye - top, cxs - left : cxe - left]
                oy, ox = cys - y0 - cy * size, cxs - x0 - cx * size
                np.copyto(chunks[cy, cx, oy : oy + part.shape[0], ox : ox + part.shape[1]], part)


def segment_decoder(
    page: tifffile.TiffPage, geometry: SlideGeometry
) -> Callable[[bytes, int], Pixels]:
    """A function decoding one segment's bytes to ``(rows, cols, samples)``."""
    if page.compression == JPEG and page.bitspersample == 8:
        return _jpeg_decoder(page, geometry)
    decode = page.decode

    def decode_any(data: bytes, index: int) -> Pixels:
        pixels = decode(data, index, jpegtables=page.jpegtables)[0]
        if pixels is None:
            raise InvalidInput(f"{page.parent.filename}: segment {index} could not be decoded")
        return np.asarray(pixels).reshape(pixels.shape[-3:])

    return decode_any


def _jpeg_decoder(
    page: tifffile.TiffPage, geometry: SlideGeometry
) -> Callable[[bytes, int], Pixels]:
    """libjpeg-turbo straight from the segment bytes, into one reused buffer per reader.

    The colour space follows tifffile: Aperio writes RGB JPEG without a JFIF marker, which must be
    decoded as RGB (not YCbCr) to match what every other reader shows.
    """
    header = page.jpegheader  # NDPI: SOI..SOS of the strip, sized to one restart interval
    jfif = page.is_jfif or (header is not None and b"JFIF" in header[:32])
    colorspace, outcolorspace = tifffile.tifffile.jpeg_decode_colorspace(
        page.photometric, page.planarconfig, page.extrasamples, jfif
    )
    shape = (geometry.segment_height, geometry.segment_width, geometry.samples)
    tables = page.jpegtables
    buffers = threading.local()  # one reused output tile per decoding thread

    def decode_jpeg(data: bytes, index: int) -> Pixels:
        if not hasattr(buffers, "tile"):
            buffers.tile = np.empty(shape, np.uint8)
        out = buffers.tile if geometry.samples == 3 else buffers.tile[..., 0]
        if header is not None:
            data = header + data
        try:
            pixels = imagecodecs.jpeg8_decode(
                data, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace, out=out
            )
        except (imagecodecs.Jpeg8Error, ValueError) as err:
            raise InvalidInput(f"{page.parent.filename}: JPEG tile {index}: {err}") from err
        return np.asarray(pixels).reshape(pixels.shape[0], pixels.shape[1], geometry.samples)

    return decode_jpeg

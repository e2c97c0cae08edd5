"""Reading DICOM whole-slide images (a VL Whole Slide Microscopy series) region by region.

A DICOM slide is a folder of instances (``dicom/<patient>/<study>/<series>/`` in the research
store, or any folder given to ``mira convert``). Only its full-resolution level is read, as for a
TIFF: mira builds its own pyramid. The level may be one instance or a concatenation of several,
its frames tiled in full (one per tile, row by row) or sparse (each frame at its own position; a
tile without a frame is 0, as a missing TIFF tile is). Frames are read straight from the files by
the byte spans ``tasks.ingest.read_wsi_instance`` found, and decoded with imagecodecs: JPEG
(libjpeg-turbo, RGB or YBR as the Photometric Interpretation says), JPEG 2000, JPEG-LS, or copied
when uncompressed. ``DicomRegionReader`` answers the same calls as ``source.RegionReader``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from zarr.codecs import TransposeCodec

from mira.errors import InvalidInput
from storage import ObjectInfo, Store
from tasks.dataset import read_table
from tasks.ingest import (
    WSI_SOP_CLASS,
    FrameSpans,
    WsiInstance,
    check_wsi_series,
    read_wsi_instance,
)
from tasks.wsi.jpeg import JpegTileCodec
from tasks.wsi.pyramid import INTERLEAVED
from tasks.wsi.source import SlideGeometry, SlideMetadata

Pixels = NDArray[Any]
DICOM_FORMAT = "dicom-wsi"
OPENED_SLIDES = 4  # DICOM slides kept indexed in a process (a conversion opens one per task)


@dataclass(frozen=True)
class DicomSlide:
    """Level 0 of a DICOM slide: its instances' keys, records and frame spans, and the frame
    of each tile (``tiles[row * across + col]``: ``(part, frame)``, or None where sparse)."""

    folder: str
    keys: tuple[str, ...]  # level 0's instances, concatenation order
    parts: tuple[WsiInstance, ...]
    spans: tuple[tuple[FrameSpans, ...], ...]  # per part, per frame
    tiles: tuple[tuple[int, int] | None, ...]
    metadata: SlideMetadata

    @property
    def first(self) -> WsiInstance:
        return self.parts[0]

    def geometry(self) -> SlideGeometry:
        first = self.first
        return SlideGeometry(
            height=first.total_rows,
            width=first.total_columns,
            samples=first.samples,
            dtype="uint8" if first.bits_allocated == 8 else "uint16",
            segment_height=first.tile_rows,
            segment_width=first.tile_columns,
        )


def series_objects(store: Store, folder: str) -> list[ObjectInfo]:
    """The objects directly inside ``folder`` (a series' instances), sorted by key."""
    prefix = folder.rstrip("/") + "/"
    return sorted(
        (info for info in store.list(prefix) if "/" not in info.key[len(prefix) :]),
        key=lambda info: info.key,
    )


def dicom_slide_folders(research: Store) -> list[str]:
    """The research store's DICOM whole-slide series (``dicom/<patient>/<study>/<series>``),
    from the catalog's instances of the VL Whole Slide Microscopy class."""
    instances = read_table(research, "instances")
    if not {"key", "sop_class_uid"} <= set(instances.column_names):
        return []
    rows = instances.select(["key", "sop_class_uid"]).to_pylist()
    folders = {
        row["key"].rsplit("/", 1)[0] for row in rows if row["sop_class_uid"] == WSI_SOP_CLASS
    }
    return sorted(folder for folder in folders if series_objects(research, folder))


def is_dicom_slide(store: Store, key: str) -> bool:
    """Whether ``key`` names a folder of objects (a DICOM series) rather than one slide file."""
    return not store.exists(key) and bool(series_objects(store, key))


def series_info(store: Store, folder: str) -> ObjectInfo:
    """The series as one object: total size, and an etag made of its instances' keys, sizes and
    etags (None when an instance has none: the content is then hashed)."""
    objects = series_objects(store, folder)
    if not objects:
        raise InvalidInput(f"no DICOM instances in {store.url_of(folder)}")
    size = sum(info.size for info in objects)
    if any(info.etag is None for info in objects):
        return ObjectInfo(key=folder, size=size)
    lines = "".join(f"{info.key}\0{info.size}\0{info.etag}\n" for info in objects)
    return ObjectInfo(key=folder, size=size, etag=hashlib.sha256(lines.encode()).hexdigest())


def series_sha256(store: Store, folder: str) -> str:
    """A content hash of the series: SHA-256 of each instance's name and SHA-256, in key order."""
    digest = hashlib.sha256()
    for info in series_objects(store, folder):
        name = info.key.rsplit("/", 1)[-1]
        digest.update(f"{name}\0{store.sha256(info.key)}\n".encode())
    return digest.hexdigest()


def open_dicom_slide(store: Store, folder: str) -> DicomSlide:
    """Index the series in ``folder``: check it is a complete slide, locate level 0's frames."""
    records: dict[str, tuple[WsiInstance, list[FrameSpans]]] = {}
    for info in series_objects(store, folder):
        with store.open_read(info.key) as stream:
            try:
                records[info.key] = read_wsi_instance(stream)
            except InvalidInput as err:
                raise InvalidInput(f"{store.url_of(info.key)}: {err}") from err
    if not records:
        raise InvalidInput(f"no DICOM instances in {store.url_of(folder)}")
    try:
        series = check_wsi_series(record for record, _ in records.values())
    except InvalidInput as err:
        raise InvalidInput(f"{store.url_of(folder)}: {err}") from err
    level = series.levels[0]
    by_uid = {record.sop_instance_uid: key for key, (record, _) in records.items()}
    keys = tuple(by_uid[part.sop_instance_uid] for part in level.instances)
    spans = tuple(tuple(records[key][1]) for key in keys)
    return DicomSlide(
        folder=folder,
        keys=keys,
        parts=level.instances,
        spans=spans,
        tiles=_tile_frames(level.instances),
        metadata=_metadata(level.first),
    )


def _tile_frames(parts: tuple[WsiInstance, ...]) -> tuple[tuple[int, int] | None, ...]:
    first = parts[0]
    across = first.tiles_across
    tiles: list[tuple[int, int] | None] = [None] * (across * first.tiles_down)
    for number, part in enumerate(parts):
        if part.organization == "TILED_FULL":  # frames run row by row through the whole level
            for frame in range(part.frames):
                tiles[part.frame_offset + frame] = (number, frame)
        else:
            for frame, (row, column) in enumerate(part.positions):
                tiles[(row // first.tile_rows) * across + column // first.tile_columns] = (
                    number,
                    frame,
                )
    return tuple(tiles)


def _metadata(instance: WsiInstance) -> SlideMetadata:
    """Microns per pixel from the Pixel Spacing (mm), else the imaged volume over the matrix."""
    mpp_x = mpp_y = None
    if instance.pixel_spacing_mm is not None:
        mpp_y, mpp_x = (1000.0 * value for value in instance.pixel_spacing_mm)
    elif instance.imaged_volume_mm is not None:
        width, height = instance.imaged_volume_mm
        mpp_x = 1000.0 * width / instance.total_columns
        mpp_y = 1000.0 * height / instance.total_rows
    vendor = instance.manufacturer.strip() or None
    return SlideMetadata(DICOM_FORMAT, vendor, instance.objective_power, mpp_x, mpp_y)


_OPENED: dict[tuple[str, str | None], DicomSlide] = {}
_OPENED_LOCK = threading.Lock()


def shared_dicom_slide(store: Store, folder: str, etag: str | None) -> DicomSlide:
    """``open_dicom_slide`` once per process and series version (the region tasks share it)."""
    name = (store.url_of(folder), etag)
    with _OPENED_LOCK:
        slide = _OPENED.get(name) if etag else None
    if slide is None:
        slide = open_dicom_slide(store, folder)
        with _OPENED_LOCK:
            if etag:
                _OPENED[name] = slide
            while len(_OPENED) > OPENED_SLIDES:
                _OPENED.pop(next(iter(_OPENED)))
    return slide


class DicomRegionReader:
    """Rectangular regions of a DICOM slide's level 0, cut into chunks, as ``RegionReader``."""

    def __init__(self, store: Store, slide: DicomSlide) -> None:
        self._store = store
        self._slide = slide
        self.geometry = slide.geometry()
        self._decode = frame_decoder(slide.first)
        self._across = slide.first.tiles_across
        self._stored: dict[int, bytes] = {}
        self._kept: dict[int, Pixels] = {}

    def prefetch(self, y0: int, x0: int, height: int, width: int, fetch: Any = None) -> None:
        """Read the frames under the window, one ``read_ranges`` round per instance file
        (``fetch``, the TIFF reader's single-file fetch, is not used)."""
        wanted = [i for i in self._tiles_in(y0, x0, height, width) if i not in self._stored]
        self._stored.update(self._read_frames(wanted))

    def _read_frames(self, tiles: list[int]) -> dict[int, bytes]:
        by_part: dict[int, list[tuple[int, FrameSpans]]] = {}
        for tile in tiles:
            place = self._slide.tiles[tile]
            if place is not None:
                part, frame = place
                by_part.setdefault(part, []).append((tile, self._slide.spans[part][frame]))
        frames: dict[int, bytes] = {}
        for part, wanted in by_part.items():
            ranges = [span for _, spans in wanted for span in spans]
            data = iter(self._store.read_ranges(self._slide.keys[part], ranges))
            for tile, spans in wanted:
                frames[tile] = b"".join(next(data) for _ in spans)
        return frames

    def chunks_shape(self, height: int, width: int, chunk: int) -> tuple[int, ...]:
        return (-(-height // chunk), -(-width // chunk), chunk, chunk, self.geometry.samples)

    def read_chunks(
        self,
        y0: int,
        x0: int,
        height: int,
        width: int,
        chunk: int,
        pool: Any = None,
        out: Pixels | None = None,
        keep_within: tuple[int, int, int, int] | None = None,
    ) -> Pixels:
        """Pixels ``[y0:y0+height, x0:x0+width]`` as zero-padded chunks (see ``RegionReader``):
        each frame decoded once while the windows of a band use it."""
        g = self.geometry
        shape = self.chunks_shape(height, width, chunk)
        chunks = out if out is not None else np.empty(shape, dtype=g.dtype)
        if chunks.shape != shape:
            raise ValueError(f"read_chunks needs out of {shape}, not {chunks.shape}")
        chunks.fill(0)
        window = (y0, x0, min(y0 + height, g.height), min(x0 + width, g.width))
        tiles = self._tiles_in(y0, x0, height, width)
        missing = [t for t in tiles if t not in self._kept and t not in self._stored]
        self._stored.update(self._read_frames(missing))
        for tile in tiles:
            pixels = self._kept.get(tile)
            if pixels is None and self._stored.get(tile):
                pixels = self._decode(self._stored.pop(tile), tile)
            if pixels is None:
                continue  # a sparse slide's tile without a frame stays 0
            self._place(pixels, tile, chunks, window)
            if self._reaches_past(tile, window, keep_within):
                self._kept[tile] = pixels
            else:
                self._kept.pop(tile, None)
        return chunks

    def read_tile(self, y0: int, x0: int, height: int, width: int, out: Pixels) -> bytes:
        """The stored bytes of the frame at ``(y0, x0)`` and its pixels in ``out`` (passthrough:
        chunks are tiles); empty bytes and zeros where a sparse slide has no frame."""
        g = self.geometry
        if y0 % g.segment_height or x0 % g.segment_width or out.shape[-2] != g.segment_width:
            raise ValueError(f"read_tile: ({y0}, {x0}) is not one {g.segment_width} px tile")
        tile = (y0 // g.segment_height) * self._across + x0 // g.segment_width
        data = self._stored.pop(tile, None)
        if data is None:
            data = self._read_frames([tile]).get(tile, b"")
        out.fill(0)
        if data:
            window = (y0, x0, min(y0 + height, g.height), min(x0 + width, g.width))
            self._place(self._decode(data, tile), tile, out, window)
        return data

    def _tiles_in(self, y0: int, x0: int, height: int, width: int) -> list[int]:
        g = self.geometry
        rows = range(
            y0 // g.segment_height, (min(y0 + height, g.height) - 1) // g.segment_height + 1
        )
        cols = range(x0 // g.segment_width, (min(x0 + width, g.width) - 1) // g.segment_width + 1)
        return [r * self._across + c for r in rows for c in cols]

    def _reaches_past(
        self, tile: int, window: tuple[int, int, int, int], within: tuple[int, int, int, int] | None
    ) -> bool:
        if within is None:
            return False
        g = self.geometry
        top = (tile // self._across) * g.segment_height
        left = (tile % self._across) * g.segment_width
        bottom = min(top + g.segment_height, within[2], g.height)
        right = min(left + g.segment_width, within[3], g.width)
        return bottom > window[2] or right > window[3]

    def _place(
        self, tile_pixels: Pixels, tile: int, chunks: Pixels, window: tuple[int, int, int, int]
    ) -> None:
        """Copy the part of one decoded frame inside the window into the chunks it overlaps."""
        g, size = self.geometry, chunks.shape[2]
        y0, x0, y1, x1 = window
        top = (tile // self._across) * g.segment_height
        left = (tile % self._across) * g.segment_width
        ys, ye = max(top, y0), min(top + tile_pixels.shape[0], y1)
        xs, xe = max(left, x0), min(left + tile_pixels.shape[1], x1)
        for cy in range((ys - y0) // size, (ye - 1 - y0) // size + 1):
            cys, cye = max(ys, y0 + cy * size), min(ye, y0 + (cy + 1) * size)
            for cx in range((xs - x0) // size, (xe - 1 - x0) // size + 1):
                cxs, cxe = max(xs, x0 + cx * size), min(xe, x0 + (cx + 1) * size)
                part = tile_pixels[cys - top : cye - top, cxs - left : cxe - left]
                oy, ox = cys - y0 - cy * size, cxs - x0 - cx * size
                np.copyto(chunks[cy, cx, oy : oy + part.shape[0], ox : ox + part.shape[1]], part)


def jpeg_colorspaces(instance: WsiInstance) -> tuple[str | None, str | None]:
    """(stream, output) colour spaces for libjpeg-turbo: an RGB Photometric Interpretation means
    the stream's components are R, G, B (no transform), YBR means YCbCr, converted to RGB."""
    if instance.samples == 1:
        return None, None
    if instance.photometric == "RGB":
        return "RGB", "RGB"
    return "YCBCR", "RGB"


def frame_decoder(instance: WsiInstance) -> Callable[[bytes, int], Pixels]:
    """A function decoding one frame's bytes to ``(tile_rows, tile_columns, samples)``."""
    shape = (instance.tile_rows, instance.tile_columns, instance.samples)
    dtype = np.uint8 if instance.bits_allocated == 8 else np.uint16
    codec = instance.codec
    if codec is None and instance.photometric not in ("RGB", "MONOCHROME2"):
        raise InvalidInput(f"uncompressed frames in {instance.photometric} are not supported")
    colorspace, outcolorspace = jpeg_colorspaces(instance)

    def decode(data: bytes, tile: int) -> Pixels:
        try:
            if codec == "jpeg":
                pixels = imagecodecs.jpeg8_decode(
                    data, colorspace=colorspace, outcolorspace=outcolorspace
                )
            elif codec == "jpeg2000":
                pixels = imagecodecs.jpeg2k_decode(data)
            elif codec == "jpegls":
                pixels = imagecodecs.jpegls_decode(data)
            elif instance.planar:
                planes = np.frombuffer(data, dtype).reshape(shape[2], shape[0], shape[1])
                pixels = planes.transpose(1, 2, 0)
            else:
                pixels = np.frombuffer(data, dtype, count=int(np.prod(shape)))
        except Exception as err:  # every codec's own error class: the frame is unreadable
            raise InvalidInput(f"frame of tile {tile}: {type(err).__name__}: {err}") from err
        pixels = np.asarray(pixels)
        if pixels.size != np.prod(shape) or pixels.dtype != dtype:
            raise InvalidInput(
                f"frame of tile {tile} decodes to {pixels.shape} {pixels.dtype}, not {shape}"
            )
        return pixels.reshape(shape)

    return decode


@contextlib.contextmanager
def dicom_region_readers(
    store: Store, folder: str, etag: str | None
) -> Iterator[Callable[[], DicomRegionReader]]:
    """A maker of readers for the region tasks of one conversion (one reader per band)."""
    slide = shared_dicom_slide(store, folder, etag)
    yield lambda: DicomRegionReader(store, slide)


def dicom_level0_codecs(slide: DicomSlide) -> list[Any]:
    """The passthrough level 0's codecs: ``(c, y, x)`` chunks transposed to frames' ``(y, x,
    c)``, then each frame's JPEG stream as scanned (complete streams: no shared tables)."""
    first = slide.first
    if first.codec != "jpeg" or first.bits_allocated != 8:
        raise InvalidInput(f"{slide.folder}: --codec jpeg needs JPEG baseline frames at level 0")
    if first.tile_rows != first.tile_columns:
        raise InvalidInput(f"{slide.folder}: --codec jpeg needs square frames at level 0")
    colorspace_jpeg, colorspace_data = jpeg_colorspaces(first)
    codec = JpegTileCodec(colorspace_jpeg=colorspace_jpeg, colorspace_data=colorspace_data)
    return [TransposeCodec(order=INTERLEAVED), codec]

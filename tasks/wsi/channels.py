"""Level 0 of a multiplexed slide, one greyscale page per channel (Akoya QPTIFF), read as one
image whose samples are the channels, so the pyramid's ``c`` axis holds them in page order.

Each channel page is read by its own ``RegionReader``; a region's chunks are assembled channel
by channel into the interleaved ``(y, x, channel)`` chunks the converter encodes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np
import tifffile

from mira.errors import InvalidInput
from tasks.slide_vendors import main_series, slide_vendor
from tasks.wsi.source import (
    SUPPORTED_DTYPES,
    Pixels,
    RangeFetch,
    RegionReader,
    SlideGeometry,
    full_resolution_page,
    slide_geometry,
)


def level0_pages(tif: tifffile.TiffFile) -> tuple[tifffile.TiffPage, ...]:
    """The main image's full-resolution pages: one, or one per channel of a multiplexed QPTIFF
    (all greyscale, of one size, pixel type and tiling)."""
    if not tif.series:
        raise InvalidInput(f"no image series in {tif.filename}")
    level = main_series(tif).levels[0]
    if len(level.pages) == 1 or slide_vendor(tif) != "akoya":
        return (full_resolution_page(tif),)
    pages = tuple(p for p in level.pages if isinstance(p, tifffile.TiffPage))
    if len(pages) != len(level.pages):
        raise InvalidInput(f"{tif.filename}: a channel page cannot be parsed")
    first = pages[0]
    layout = (first.shape, first.dtype, first.tilelength, first.tilewidth, first.compression)
    for page in pages:
        if page.samplesperpixel != 1:
            raise InvalidInput(f"{tif.filename}: multiplexed channels must be greyscale pages")
        if (page.shape, page.dtype, page.tilelength, page.tilewidth, page.compression) != layout:
            raise InvalidInput(f"{tif.filename}: channel pages differ in size or storage")
    if first.dtype is None or first.dtype.name not in SUPPORTED_DTYPES or not first.is_tiled:
        raise InvalidInput(f"{tif.filename}: channel pages must be tiled 8- or 16-bit")
    return pages


def level0_geometry(pages: tuple[tifffile.TiffPage, ...]) -> SlideGeometry:
    """Level 0's geometry, its samples the channels when there are several pages."""
    geometry = slide_geometry(pages[0])
    return replace(geometry, samples=len(pages)) if len(pages) > 1 else geometry


class ChannelReader:
    """``RegionReader``'s calls over one page per channel."""

    def __init__(self, tif: tifffile.TiffFile, pages: tuple[tifffile.TiffPage, ...]) -> None:
        self._readers = [RegionReader(tif, page) for page in pages]
        self.geometry = level0_geometry(pages)

    def prefetch(self, y0: int, x0: int, height: int, width: int, fetch: RangeFetch) -> None:
        for reader in self._readers:
            reader.prefetch(y0, x0, height, width, fetch)

    def chunks_shape(self, height: int, width: int, chunk: int) -> tuple[int, ...]:
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
        """Each channel's chunks read into one buffer, then placed as that channel's sample."""
        shape = self.chunks_shape(height, width, chunk)
        chunks = out if out is not None else np.empty(shape, self.geometry.dtype)
        plane = np.empty((*shape[:-1], 1), self.geometry.dtype)
        for channel, reader in enumerate(self._readers):
            reader.read_chunks(y0, x0, height, width, chunk, pool, plane, keep_within)
            chunks[..., channel] = plane[..., 0]
        return chunks

    def read_tile(self, y0: int, x0: int, height: int, width: int, out: Pixels) -> bytes:
        raise InvalidInput("--codec jpeg needs one RGB or grey page at level 0, not channels")


def level0_reader_maker(tif: tifffile.TiffFile) -> Callable[[], RegionReader | ChannelReader]:
    """A maker of level-0 readers: of the one page, or of the channel pages together."""
    pages = level0_pages(tif)
    if len(pages) == 1:
        return lambda: RegionReader(tif, pages[0])
    return lambda: ChannelReader(tif, pages)

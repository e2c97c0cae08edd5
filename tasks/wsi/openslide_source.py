"""Reading the slide formats only OpenSlide reads (3DHISTECH MIRAX ``.mrxs``, Hamamatsu VMS/VMU,
Sakura SVSLIDE, ...) region by region, for conversion only.

These are not TIFFs (MIRAX is an index file, a ``Slidedat.ini`` and data files of JPEG images
in a folder beside the ``.mrxs``), so mira cannot de-identify them in place: a lab converts them
(``mira convert``), and the pyramid carries only their pixels and optics. Regions are read with
``read_region`` at level 0, in the region tasks of the Dask graph like a TIFF's tiles; pixels
OpenSlide leaves transparent (no scanned image there) take the slide's background colour.
OpenSlide needs a file on this machine, so these formats convert from a local store only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
import openslide
from numpy.typing import NDArray

from mira.errors import InvalidInput
from storage import Store
from tasks.wsi.source import SlideGeometry, SlideMetadata

Pixels = NDArray[Any]
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
DEFAULT_TILE = 256
FORMATS = {"mirax": "mrxs", "hamamatsu": "vms", "sakura": "svslide"}


def is_openslide_slide(store: Store, key: str) -> bool:
    """Whether ``key`` is a local, non-TIFF file that OpenSlide recognises (a TIFF goes through
    tifffile, a DICOM series through wsidicom's reader)."""
    if not store.is_local or not store.exists(key):
        return False
    path = store.filesystem_path(key)
    with open(path, "rb") as handle:
        if handle.read(4) in TIFF_MAGIC:
            return False
    return openslide.OpenSlide.detect_format(path) is not None


@contextlib.contextmanager
def open_openslide(store: Store, key: str) -> Iterator[openslide.OpenSlide]:
    """The slide at ``key`` opened by OpenSlide; an unreadable one is invalid input."""
    if not store.is_local:
        raise InvalidInput(f"{store.url_of(key)}: OpenSlide formats convert from local files only")
    try:
        slide = openslide.OpenSlide(store.filesystem_path(key))
    except openslide.OpenSlideError as err:
        raise InvalidInput(f"not a slide OpenSlide can read: {store.url_of(key)}: {err}") from err
    try:
        yield slide
    finally:
        slide.close()


def openslide_geometry(slide: openslide.OpenSlide) -> SlideGeometry:
    """Level 0's size; segments are OpenSlide's tile size hint where it gives one."""
    width, height = slide.dimensions
    props = slide.properties
    tile_w = int(props.get("openslide.level[0].tile-width", DEFAULT_TILE))
    tile_h = int(props.get("openslide.level[0].tile-height", DEFAULT_TILE))
    return SlideGeometry(height, width, 3, "uint8", tile_h, tile_w)


def openslide_metadata(slide: openslide.OpenSlide) -> SlideMetadata:
    """Format, vendor, objective and pixel size from OpenSlide's standard properties only."""
    props = slide.properties
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR)

    def number(name: str) -> float | None:
        try:
            value = float(props[name])
        except (KeyError, ValueError):
            return None
        return value if value > 0 else None

    return SlideMetadata(
        FORMATS.get(vendor or "", vendor or "openslide"),
        vendor,
        number(openslide.PROPERTY_NAME_OBJECTIVE_POWER),
        number(openslide.PROPERTY_NAME_MPP_X),
        number(openslide.PROPERTY_NAME_MPP_Y),
    )


class OpenSlideRegionReader:
    """Regions of level 0 through ``read_region``, cut into chunks like ``RegionReader``'s."""

    def __init__(self, slide: openslide.OpenSlide) -> None:
        self._slide = slide
        self.geometry = openslide_geometry(slide)
        colour = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "FFFFFF")
        self._background = np.array(
            [int(colour[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.uint16
        )

    def prefetch(self, y0: int, x0: int, height: int, width: int, fetch: Any = None) -> None:
        """Nothing to fetch ahead: OpenSlide reads its own files."""

    def chunks_shape(self, height: int, width: int, chunk: int) -> tuple[int, ...]:
        return (-(-height // chunk), -(-width // chunk), chunk, chunk, 3)

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
        """Pixels ``[y0:y0+height, x0:x0+width]`` as zero-padded chunks of ``chunk`` px."""
        shape = self.chunks_shape(height, width, chunk)
        chunks = out if out is not None else np.empty(shape, np.uint8)
        chunks.fill(0)
        h = max(0, min(height, self.geometry.height - y0))
        w = max(0, min(width, self.geometry.width - x0))
        if h and w:
            region = self._region(y0, x0, h, w)
            for cy in range(-(-h // chunk)):
                for cx in range(-(-w // chunk)):
                    part = region[cy * chunk : (cy + 1) * chunk, cx * chunk : (cx + 1) * chunk]
                    chunks[cy, cx, : part.shape[0], : part.shape[1]] = part
        return chunks

    def read_tile(self, y0: int, x0: int, height: int, width: int, out: Pixels) -> bytes:
        raise InvalidInput("--codec jpeg needs a TIFF or DICOM slide's own JPEG tiles")

    def _region(self, y0: int, x0: int, height: int, width: int) -> Pixels:
        """RGB of a region, transparent pixels composited onto the background colour."""
        rgba = np.asarray(self._slide.read_region((x0, y0), 0, (width, height)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = rgba[..., :3].astype(np.uint16)
        # read_region un-premultiplies: colour * alpha + background * (255 - alpha)
        blended = (rgb * alpha + self._background * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8)


@contextlib.contextmanager
def openslide_region_readers(
    store: Store, key: str
) -> Iterator[Callable[[], OpenSlideRegionReader]]:
    """A maker of readers sharing one open slide (OpenSlide handles are thread-safe)."""
    with open_openslide(store, key) as slide:
        yield lambda: OpenSlideRegionReader(slide)

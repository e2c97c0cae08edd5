"""Which pages of a slide TIFF form its pyramid: the only pages a de-identified slide keeps.

A label or macro photograph carries the patient's name, MRN and birth date in its pixels, and
vendors name it as they please (Aperio ``label``, Ventana ``Label_Image``, or nothing at all), so
the decision is taken by geometry, never by name: level 0 is the largest tiled page, and a level
is a tiled page of the same pixel format whose width and height are both level 0's divided by
one common factor (within a pixel of rounding), stored in the main page chain or as a SubIFD of
level 0. Every other page is dropped, whatever its description says; a description can only
drop more (a label that happens to have a level's proportions). Two pages claiming the same
level cannot be told apart, so such a slide is refused.

Thumbnails are dropped too: a thumbnail may show the label, and the project has no OCR to read
one yet. An Aperio file needs a thumbnail as its second page (tifffile and OpenSlide find the
levels by that layout), so :func:`pyramid_thumbnail` rebuilds one from the smallest kept level:
it holds no pixel that the pyramid does not.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np
import tifffile
from numpy.typing import NDArray
from tifffile.tifffile import jpeg_shape

from mira.errors import DeidentificationError, InvalidInput
from tasks.slide_vendors import associated_pages, slide_vendor

THUMBNAIL_MAX = 1024  # pixels on the long side of a rebuilt thumbnail
_JPEG = frozenset({7, 33007, 34892})  # compressions tifffile decodes with the JPEG codec
_JPEG2000 = frozenset({33003, 33004, 33005, 34712})
# Words vendors use for associated images; `_` and digits count as separators (``Label_Image``).
_ASSOCIATED = re.compile(r"(?<![a-z])(label|macro|thumbnail|overview)(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class PyramidPages:
    """Level 0, its reduced levels (as SubIFDs of level 0, and as pages of the main chain,
    largest first) and a name for each page dropped."""

    base: tifffile.TiffPage
    subifd_levels: tuple[tifffile.TiffPage, ...]
    levels: tuple[tifffile.TiffPage, ...]
    removed: tuple[str, ...]
    # A multiplexed QPTIFF: each level's pages, one per channel, largest level first (the
    # first channel's pages are ``base`` and ``levels``); empty for every other slide.
    planes: tuple[tuple[tifffile.TiffPage, ...], ...] = ()

    @property
    def count(self) -> int:
        return 1 + len(self.subifd_levels) + len(self.levels)

    @property
    def smallest(self) -> tifffile.TiffPage:
        return min((self.base, *self.subifd_levels, *self.levels), key=_area)


def pyramid_pages(tif: tifffile.TiffFile) -> PyramidPages:
    """Sort a slide's pages into its pyramid and the pages to drop (see the module doc)."""
    pages = _main_pages(tif)
    named = associated_pages(tif)  # what the vendor's metadata calls label, macro, ...
    if (channels := _channel_pyramid(tif, pages, named)) is not None:
        return channels
    candidates = [
        p for p in pages if p.is_tiled and not _associated_word(p) and p.index not in named
    ]
    if not candidates:
        raise InvalidInput("the TIFF holds no tiled pyramid level")
    base = max(candidates, key=_area)  # the first of equals: max keeps the first it meets
    sub_pages = _subifd_pages(base)
    levels = [p for p in candidates if p is not base and _is_level_of(base, p)]
    sub_levels = [p for p in sub_pages if not _associated_word(p) and _is_level_of(base, p)]
    _check_one_page_per_level(base, [*sub_levels, *levels])
    kept = {id(p) for p in (base, *levels)}
    removed = [named.get(p.index) or _removed_name(p) for p in pages if id(p) not in kept]
    kept_subs = {id(p) for p in sub_levels}
    removed += [_removed_name(p, "subifd-") for p in sub_pages if id(p) not in kept_subs]
    return PyramidPages(
        base=base,
        subifd_levels=tuple(sorted(sub_levels, key=_area, reverse=True)),
        levels=tuple(sorted(levels, key=_area, reverse=True)),
        removed=tuple(removed),
    )


def _channel_pyramid(
    tif: tifffile.TiffFile, pages: list[tifffile.TiffPage], named: dict[int, str]
) -> PyramidPages | None:
    """A multiplexed QPTIFF's pyramid: level 0 is every tiled page of the first page's size and
    pixel format (one per channel); a level is a size, a reduction of level 0, held by exactly
    as many pages. None for any other slide."""
    if slide_vendor(tif) != "akoya":
        return None
    tiled = [p for p in pages if p.is_tiled and p.index not in named]
    if not tiled:
        return None
    base = tiled[0]
    fmt = (base.imagewidth, base.imagelength, base.samplesperpixel, base.dtype)
    channels = [
        p for p in tiled if (p.imagewidth, p.imagelength, p.samplesperpixel, p.dtype) == fmt
    ]
    if len(channels) < 2:
        return None
    sizes: dict[tuple[int, int], list[tifffile.TiffPage]] = {}
    for page in tiled:
        if page in channels or _is_level_of(base, page):
            sizes.setdefault((int(page.imagewidth), int(page.imagelength)), []).append(page)
    planes = sorted(
        (tuple(group) for group in sizes.values() if len(group) == len(channels)),
        key=lambda group: _area(group[0]),
        reverse=True,
    )
    kept = {id(p) for plane in planes for p in plane}
    return PyramidPages(
        base=base,
        subifd_levels=(),
        levels=tuple(plane[0] for plane in planes[1:]),
        removed=tuple(named.get(p.index) or _removed_name(p) for p in pages if id(p) not in kept),
        planes=tuple(planes),
    )


def _main_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    pages = []
    for index, page in enumerate(tif.pages):
        if not isinstance(page, tifffile.TiffPage):
            raise DeidentificationError(f"page {index} of the slide cannot be parsed")
        pages.append(page)
    return pages


def _subifd_pages(page: tifffile.TiffPage) -> list[tifffile.TiffPage]:
    if not page.subifds:
        return []
    pages = list(tifffile.TiffPages(page))
    if not all(isinstance(p, tifffile.TiffPage) for p in pages):
        raise DeidentificationError("a SubIFD of level 0 cannot be parsed")
    return pages  # type: ignore[return-value]


def _area(page: tifffile.TiffPage) -> int:
    return int(page.imagewidth) * int(page.imagelength)


def _associated_word(page: tifffile.TiffPage) -> str | None:
    """The associated-image word of a page's description (XML descriptions are not read: an
    OME-XML names every image of the file in level 0's description)."""
    description = page.description.split("|")[0] if page.description else ""
    if description.lstrip().startswith("<"):
        return None
    match = _ASSOCIATED.search(description)
    return match.group(1).lower() if match else None


def _is_level_of(base: tifffile.TiffPage, page: tifffile.TiffPage) -> bool:
    """Whether ``page`` is level 0 reduced by one factor in both directions (to a pixel)."""
    if not page.is_tiled or page.imagedepth != base.imagedepth:
        return False
    if (page.samplesperpixel, page.dtype) != (base.samplesperpixel, base.dtype):
        return False
    width, height = int(page.imagewidth), int(page.imagelength)
    if not (0 < width < base.imagewidth and 0 < height < base.imagelength):
        return False
    low_w, high_w = _factor_range(int(base.imagewidth), width)
    low_h, high_h = _factor_range(int(base.imagelength), height)
    return max(low_w, low_h) <= min(high_w, high_h)


def _factor_range(full: int, reduced: int) -> tuple[float, float]:
    """The reduction factors ``f`` for which ``full / f`` is within a pixel of ``reduced``."""
    high = full / (reduced - 1) if reduced > 1 else float("inf")
    return full / (reduced + 1), high


def _check_one_page_per_level(base: tifffile.TiffPage, levels: list[tifffile.TiffPage]) -> None:
    seen: dict[tuple[int, int], tifffile.TiffPage] = {}
    for page in levels:
        size = (int(page.imagewidth), int(page.imagelength))
        if size in seen:
            raise DeidentificationError(
                f"two pages of the slide claim the {size[0]}x{size[1]} level of its "
                f"{base.imagewidth}x{base.imagelength} pyramid: one of them may be a label"
            )
        seen[size] = page


def _removed_name(page: tifffile.TiffPage, prefix: str = "") -> str:
    """A name for a dropped page: its associated-image word, else its TIFF subfile type."""
    word = _associated_word(page)
    if word:
        return word
    named = {1: "label", 9: "macro"}.get(int(page.subfiletype))
    return named or f"{prefix}associated-{page.index}"


def pyramid_thumbnail(page: tifffile.TiffPage) -> NDArray[np.generic]:
    """A thumbnail of at most ``THUMBNAIL_MAX`` pixels a side, every n-th pixel of ``page``
    (the smallest level), decoded one tile at a time so memory stays at a tile and the result.
    A tile whose own header declares more pixels than the page's tiles is refused before it
    is decoded (a decompression bomb: 256 x 256 tiles declaring 60000 x 60000)."""
    height, width = int(page.imagelength), int(page.imagewidth)
    step = -(-max(height, width) // THUMBNAIL_MAX)
    samples = int(page.samplesperpixel)
    out = np.zeros((-(-height // step), -(-width // step), samples), page.dtype)
    handle = page.parent.filehandle
    for index, (offset, count) in enumerate(
        zip(page.dataoffsets, page.databytecounts, strict=True)
    ):
        if not count:
            continue
        handle.seek(offset)
        data = handle.read(count)
        _check_declared_size(page, data)
        segment, position, _ = page.decode(
            data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader
        )
        if segment is None:
            continue
        top, left = int(position[2]), int(position[3])
        tile = segment.reshape(segment.shape[-3:])[: height - top, : width - left]
        first_row, first_col = (-top) % step, (-left) % step
        picked = tile[first_row::step, first_col::step]
        row, col = (top + first_row) // step, (left + first_col) // step
        out[row : row + picked.shape[0], col : col + picked.shape[1]] = picked
    return out if samples > 1 else out[..., 0]


def _check_declared_size(page: tifffile.TiffPage, data: bytes) -> None:
    """Refuse a JPEG or JPEG 2000 tile that declares more pixels than a tile holds (tifffile
    bounds the output of the other codecs by the tile size itself)."""
    if page.compression in _JPEG:
        size = _jpeg_size(data)
    elif page.compression in _JPEG2000:
        size = _jpeg2000_size(data)
    else:
        return
    if size is None or size[0] > page.tilelength or size[1] > page.tilewidth:
        declared = f"{size[1]}x{size[0]}" if size else "no readable size"
        raise DeidentificationError(
            f"a tile of the {page.imagewidth}x{page.imagelength} level declares {declared} "
            f"pixels, more than its {page.tilewidth}x{page.tilelength} tiles hold"
        )


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame marker."""
    try:
        _, height, width, _ = jpeg_shape(data)
    except Exception:
        return None
    return int(height), int(width)


def _jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG 2000 codestream's SIZ marker (raw or inside a JP2 box)."""
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(data) < start + 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">4I", data, start + 8)
    return ysiz - yosiz, xsiz - xosiz

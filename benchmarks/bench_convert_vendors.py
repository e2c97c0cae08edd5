"""Conversion throughput per scanner format, against the floor, as ``bench_convert`` does for SVS.

For each format a slide of ``--size`` is generated (tests/vendor_slides.py: the vendors' own
layouts; an Aperio SVS of the same pixels for comparison), then timed:

- ``floor``: decode every level-0 segment with mira's own decoder and encode it with zstd 1,
  nothing else (for MRXS: OpenSlide's ``read_region`` over level 0 in 512 px tiles, encoded);
- ``mira``: ``convert_slide`` to OME-Zarr (zstd 1), in process with ``--workers`` threads.

Both run on ``--workers`` threads and write to /dev/shm where it exists. The ratio mira/floor is
the number to watch, as for SVS (target 0.6 on 2 cores); an NDPI's segments are its restart
intervals (8 px high), so its floor is dominated by per-call overhead.
Results go to benchmarks/results/bench_convert_vendors.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUTPUT = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
FORMATS = ("svs", "hamamatsu", "leica", "ventana", "philips", "akoya", "akoya-multiplex", "mirax")
OPENSLIDE_TILE = 512


def write_slide(kind: str, folder: Path, height: int, width: int) -> Path:
    from tests.slides import write_slide as write_generic
    from tests.vendor_slides import write_mrxs_slide, write_multiplexed_qptiff, write_vendor_slide

    if kind == "svs":
        path = folder / "slide.svs"
        return write_generic(path, height, width, kind="svs", levels=2, bigtiff=True)
    if kind == "akoya-multiplex":  # three zstd greyscale channel pages
        return write_multiplexed_qptiff(folder / "slide.qptiff", size=(height, width))
    if kind == "mirax":
        return write_mrxs_slide(folder / "slide.mrxs", (height, width))
    return write_vendor_slide(kind, folder, (height, width))


def tiff_floor(path: Path, workers: int) -> int:
    """Decode and re-encode every level-0 segment; returns the raw bytes."""
    import tifffile

    from tasks.wsi.channels import level0_geometry, level0_pages
    from tasks.wsi.pyramid import ChunkCodec
    from tasks.wsi.source import segment_decoder, slide_geometry

    encode = ChunkCodec("zstd", 1).encoder()
    with tifffile.TiffFile(path) as tif:
        pages = level0_pages(tif)  # a multiplexed slide: every channel page
        segments = [
            (offset, count, index, segment_decoder(page, slide_geometry(page)))
            for page in pages
            for index, (offset, count) in enumerate(
                zip(page.dataoffsets, page.databytecounts, strict=True)
            )
        ]

        def share(first: int) -> int:
            written = 0
            with path.open("rb") as handle:
                for offset, count, index, decode in segments[first::workers]:
                    handle.seek(offset)
                    tile = decode(handle.read(count), index)
                    written += len(encode(np.ascontiguousarray(tile)))
            return written

        with ThreadPoolExecutor(workers) as pool:
            sum(pool.map(share, range(workers)))
        geometry = level0_geometry(pages)
    return geometry.height * geometry.width * geometry.samples


def openslide_floor(path: Path, workers: int) -> int:
    """Read level 0 through OpenSlide in tiles and encode each; returns the raw bytes."""
    import openslide

    from tasks.wsi.pyramid import ChunkCodec

    encode = ChunkCodec("zstd", 1).encoder()
    slide = openslide.OpenSlide(str(path))
    width, height = slide.dimensions
    tiles = [
        (x, y) for y in range(0, height, OPENSLIDE_TILE) for x in range(0, width, OPENSLIDE_TILE)
    ]

    def share(first: int) -> int:
        written = 0
        for x, y in tiles[first::workers]:
            size = (min(OPENSLIDE_TILE, width - x), min(OPENSLIDE_TILE, height - y))
            rgba = np.asarray(slide.read_region((x, y), 0, size))
            written += len(encode(np.ascontiguousarray(rgba[..., :3])))
        return written

    with ThreadPoolExecutor(workers) as pool:
        sum(pool.map(share, range(workers)))
    slide.close()
    return width * height * 3


def mira_convert(path: Path, out: Path, workers: int) -> int:
    from storage import open_store
    from tasks.wsi.convert import ConvertOptions, convert_slide

    shutil.rmtree(out / "p.ome.zarr", ignore_errors=True)
    result = convert_slide(
        open_store(path.parent), path.name, open_store(out), "p.ome.zarr",
        ConvertOptions(workers=workers),
    )  # fmt: skip
    return int(result.bytes_raw)


def timed(run: Any, rounds: int) -> tuple[float, int]:
    """Best of ``rounds`` after one untimed warm-up run (imports, page cache): (seconds, raw
    bytes)."""
    raw = run()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        raw = run()
        best = min(best, time.perf_counter() - started)
    return best, raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="4096x4096", help="generated slides, WxH")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    results = []
    with tempfile.TemporaryDirectory(dir=DEFAULT_OUTPUT) as scratch:
        for kind in args.formats.split(","):
            folder = Path(scratch) / kind
            folder.mkdir()
            path = write_slide(kind, folder, height, width)
            floor = openslide_floor if kind == "mirax" else tiff_floor
            floor_s, raw = timed(partial(floor, path, args.workers), args.rounds)
            mira_s, _ = timed(partial(mira_convert, path, folder, args.workers), args.rounds)
            row = {
                "format": kind,
                "raw_mb": raw / 1e6,
                "floor_mb_s": raw / 1e6 / floor_s,
                "mira_mb_s": raw / 1e6 / mira_s,
                "mira_vs_floor": floor_s / mira_s,
            }
            results.append(row)
            print(
                f"{kind:16} {row['raw_mb']:7.1f} MB  floor {row['floor_mb_s']:7.1f} MB/s  "
                f"mira {row['mira_mb_s']:7.1f} MB/s  mira/floor {row['mira_vs_floor']:.2f}",
                flush=True,
            )
            shutil.rmtree(folder)
    RESULTS.mkdir(exist_ok=True)
    summary = {
        "size": args.size,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "formats": results,
    }
    (RESULTS / "bench_convert_vendors.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

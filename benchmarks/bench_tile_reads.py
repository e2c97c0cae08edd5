"""Random 256 x 256 tile reads, as a training loader does them: mira's pyramid vs the source SVS.

Run: ``.venv/bin/python -m benchmarks.bench_tile_reads [--size 20000x17000] [--tiles 300]
[--threads 8]``. A real SeaweedFS S3 server is started in a temporary folder; the generated
JPEG SVS (cached, see benchmarks/slides.py) is uploaded to it and converted with mira straight
into it (and once to a local folder). Then random, unaligned 256 x 256 RGB tiles are read at
level 0 and at 4x downsampling (mira's level 2, the SVS's own level 1):

- mira pyramid through zarr-python (one shard index + one chunk range read per chunk touched),
  from S3 and from local disk;
- the same with ``--codec jpeg`` (level 0 is the scanner's JPEG tiles, decoded per chunk);
- the source SVS through tifffile's zarr store (decoding the JPEG tiles touched), from local disk
  and streamed from S3 (``Store.open_read``: s3fs with read-ahead blocks).

Each is measured one read at a time (latency-bound) and with ``--threads`` concurrent readers.
Writes benchmarks/results/bench_tile_reads.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from rich.console import Console
from rich.table import Table

from benchmarks.slides import generated_slide
from storage import Store, open_store
from tasks.wsi.convert import ConvertOptions, convert_slide
from tests.seaweedfs import SeaweedServer

RESULTS = Path(__file__).parent / "results"
TILE = 256
BUCKET = "bench-tiles"
log = logging.getLogger("bench_tile_reads")
Reader = Callable[[int, int], np.ndarray]


def random_origins(shape: tuple[int, int], count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, shape[0] - TILE, count)
    xs = rng.integers(0, shape[1] - TILE, count)
    return list(zip(ys.tolist(), xs.tolist(), strict=True))


def mira_reader(store: Store, pyramid_key: str, level: int) -> tuple[Reader, tuple[int, int]]:
    array = zarr.open_array(store.zarr_store(f"{pyramid_key}/{level}", read_only=True), mode="r")

    def read(y: int, x: int) -> np.ndarray:
        return np.asarray(array[:, y : y + TILE, x : x + TILE])

    return read, (array.shape[1], array.shape[2])


@contextmanager
def svs_reader(store: Store, key: str, level: int) -> Iterator[tuple[Reader, tuple[int, int]]]:
    """tifffile's zarr view of one SVS level (the file from disk, or streamed from S3)."""
    with ExitStack() as stack:
        handle: Any = (
            store.filesystem_path(key)
            if store.is_local
            else stack.enter_context(store.open_read(key))
        )
        tif = stack.enter_context(tifffile.TiffFile(handle))
        array = zarr.open_array(tif.series[0].aszarr(level=level), mode="r")

        def read(y: int, x: int) -> np.ndarray:
            return np.asarray(array[y : y + TILE, x : x + TILE])

        yield read, (array.shape[0], array.shape[1])


def tiles_per_second(read: Reader, shape: tuple[int, int], tiles: int, threads: int) -> float:
    origins = random_origins(shape, tiles, seed=threads)
    read(*origins[0])  # opens connections, loads metadata
    started = time.perf_counter()
    if threads == 1:
        for y, x in origins:
            read(y, x)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda origin: read(*origin), origins))
    return tiles / (time.perf_counter() - started)


def measure_all(s3: Store, local: Store, tiles: int, threads: int) -> dict[str, dict[str, float]]:
    rates: dict[str, dict[str, float]] = {}
    for label, level, svs_level in (("level 0", 0, 0), ("4x (mira level 2, SVS level 1)", 2, 1)):
        for source_name, store in (("S3", s3), ("local disk", local)):
            read, shape = mira_reader(store, "pyramids/s.ome.zarr", level)
            rates[f"mira zarr, {source_name}, {label}"] = {
                f"{n} thread{'s' * (n > 1)}": tiles_per_second(read, shape, tiles, n)
                for n in (1, threads)
            }
            if level == 0:  # passthrough differs from the default at level 0 only
                read, shape = mira_reader(store, "pyramids/s-jpeg.ome.zarr", 0)
                rates[f"mira zarr --codec jpeg, {source_name}, {label}"] = {
                    f"{n} thread{'s' * (n > 1)}": tiles_per_second(read, shape, tiles, n)
                    for n in (1, threads)
                }
            with svs_reader(store, "slides/s.tiff", svs_level) as (svs_read, svs_shape):
                rates[f"SVS tifffile, {source_name}, {label}"] = {
                    f"{n} thread{'s' * (n > 1)}": tiles_per_second(svs_read, svs_shape, tiles, n)
                    for n in (1, threads)
                }
            log.info("%s measured", label)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="20000x17000", help="generated slide, WxH")
    parser.add_argument("--tiles", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    width, height = (int(side) for side in args.size.lower().split("x"))
    slide = generated_slide(width, height)
    with tempfile.TemporaryDirectory() as tmp, SeaweedServer(Path(tmp) / "weed") as server:
        server.create_bucket(BUCKET)
        s3 = open_store(f"s3://{BUCKET}/bench", server.config)
        local = open_store(Path(tmp) / "local")
        for store in (s3, local):
            with slide.open("rb") as stream:
                store.write_stream("slides/s.tiff", stream)
        conversions = {}
        for name, store in (("S3", s3), ("local disk", local)):
            for codec, key in (
                ("zstd", "pyramids/s.ome.zarr"),
                ("jpeg", "pyramids/s-jpeg.ome.zarr"),
            ):
                result = convert_slide(
                    store, "slides/s.tiff", store, key, ConvertOptions(codec=codec)
                )
                conversions[f"{name}, {codec}"] = {
                    "seconds": result.seconds,
                    "mb_per_s": result.bytes_raw / result.seconds / 1e6,
                }
                log.info("converted into %s (%s) in %.1f s", name, codec, result.seconds)
        objects = len(list(s3.list("pyramids/s.ome.zarr")))
        rates = measure_all(s3, local, args.tiles, args.threads)
    table = Table(title=f"random {TILE}x{TILE} RGB tiles per second, {slide.name}")
    table.add_column("reader")
    columns = list(next(iter(rates.values())))
    for column in columns:
        table.add_column(column, justify="right")
    for name, by_threads in rates.items():
        table.add_row(name, *(f"{by_threads[column]:,.0f}" for column in columns))
    console = Console(width=150)
    console.print(table)
    console.print(f"pyramid objects on S3: {objects}; conversions: {json.dumps(conversions)}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "slide": slide.name,
        "tiles": args.tiles,
        "threads": args.threads,
        "tiles_per_second": rates,
    }
    report |= {"conversions": conversions, "pyramid_objects_on_s3": objects}
    (RESULTS / "bench_tile_reads.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

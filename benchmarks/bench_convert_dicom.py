"""DICOM whole-slide image -> OME-Zarr conversion speed: mira beside the codec floor and wsidicom.

Run: ``.venv/bin/python -m benchmarks.bench_convert_dicom [--sizes 16384x12288] [--rounds 3]
[--workers 2] [--output /tmp]``. Slides: the real CMU Aperio slide made into DICOM by wsidicomizer
(tests/fixtures, ``make fixtures``) and generated JPEG-tiled slides, made into DICOM the same way
(cached under benchmarks/results/cache). Outputs go to /dev/shm by default. Cases, in this
process, each timed from start to finish:

- ``floor``: read and decode every level-0 frame and encode it with the codec (zstd 1), on
  ``--workers`` threads; no Dask, no zarr, no pyramid, no writes: the least work any converter
  of the slide must do.
- ``mira``: ``convert_slide`` on the series folder, lossless (decode, 2x2 means, zstd shards).
- ``mira-jpeg``: ``convert_slide`` with ``codec="jpeg"``: level 0 keeps the frames as scanned.
- ``wsidicom``: wsidicom 0.31 reading and decoding every level-0 tile of the same series
  (``read_tile``, pixels accessed), on ``--workers`` threads: the peer reader's own speed, with
  nothing encoded or written.

MB/s counts level-0 pixels (rows x columns x 3). Rounds alternate the cases; the best counts.
Writes benchmarks/results/bench_convert_dicom.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.slides import CACHE, FIXTURES, generated_slide, real_slide

RESULTS = Path(__file__).parent / "results"
CASES = ("floor", "mira", "mira-jpeg", "wsidicom")
DEFAULT_OUTPUT = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
TARGETS = {"mira_vs_floor": 0.6}  # as for SVS (bench_convert): mira at least 0.6 of the floor
log = logging.getLogger("bench_convert_dicom")


def dicom_twin(svs: Path, tile: int) -> Path:
    """The slide as a DICOM series written by wsidicomizer (its JPEG tiles copied), cached."""
    import pydicom
    from wsidicomizer import WsiDicomizer

    # importing wsidicomizer turns on pydicom's future behaviour for the whole process; mira
    # is written for pydicom 3's present one
    pydicom.config.future_behavior(False)
    target = (FIXTURES if svs.parent == FIXTURES else CACHE) / f"{svs.stem}_dicom"
    if target.is_dir() and any(target.glob("*.dcm")):
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.info("dicomizing %s (once)", svs.name)
    WsiDicomizer.convert(svs, partial, tile_size=tile, workers=2, include_label=False)
    partial.replace(target)
    return target


def floor_case(folder: Path, workers: int) -> None:
    """Read every level-0 frame's bytes, decode it and zstd-encode its pixels."""
    from storage import open_store
    from tasks.wsi.dicom_source import frame_decoder, open_dicom_slide
    from tasks.wsi.pyramid import ChunkCodec

    store = open_store(folder.parent)
    slide = open_dicom_slide(store, folder.name)
    decode = frame_decoder(slide.first)
    encode = ChunkCodec("zstd", 1).encoder()
    paths = [folder.parent / key for key in slide.keys]

    def work(tiles: list[int]) -> None:
        handles = [path.open("rb") for path in paths]
        try:
            for tile in tiles:
                place = slide.tiles[tile]
                if place is None:
                    continue
                part, frame = place
                handle = handles[part]
                data = b""
                for offset, size in slide.spans[part][frame]:
                    handle.seek(offset)
                    data += handle.read(size)
                encode(decode(data, tile))
        finally:
            for handle in handles:
                handle.close()

    tiles = list(range(len(slide.tiles)))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, [tiles[i::workers] for i in range(workers)]))


def mira_case(folder: Path, output: Path, workers: int, codec: str) -> None:
    from storage import open_store
    from tasks.wsi import ConvertOptions, convert_slide

    options = ConvertOptions(codec=codec, workers=workers)
    target = output / f"bench-{codec}.ome.zarr"
    shutil.rmtree(target, ignore_errors=True)
    convert_slide(open_store(folder.parent), folder.name, open_store(output), target.name, options)
    shutil.rmtree(target, ignore_errors=True)


def wsidicom_case(folder: Path, workers: int) -> None:
    """wsidicom reads and decodes every level-0 tile (``read_tile``), split over threads."""
    from wsidicom import WsiDicom

    with WsiDicom.open(folder) as wsi:
        level = wsi.levels.base_level
        across, down = level.tiled_size.width, level.tiled_size.height

        def work(rows: range) -> None:
            for y in rows:
                for x in range(across):
                    # np.asarray: a PIL image decodes lazily, on first access to its pixels
                    np.asarray(wsi.read_tile(0, (x, y)))

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, [range(k, down, workers) for k in range(workers)]))


def level0_bytes(folder: Path) -> int:
    from storage import open_store
    from tasks.wsi.dicom_source import open_dicom_slide

    geometry = open_dicom_slide(open_store(folder.parent), folder.name).geometry()
    return geometry.height * geometry.width * geometry.samples


def run(folder: Path, rounds: int, workers: int, output: Path) -> dict[str, Any]:
    cases: dict[str, Callable[[], None]] = {
        "floor": lambda: floor_case(folder, workers),
        "mira": lambda: mira_case(folder, output, workers, "zstd"),
        "mira-jpeg": lambda: mira_case(folder, output, workers, "jpeg"),
        "wsidicom": lambda: wsidicom_case(folder, workers),
    }
    # imported before the clock starts: a case measures reading and converting, not imports
    importlib.import_module("wsidicom")
    importlib.import_module("tasks.wsi.regions")
    best = dict.fromkeys(CASES, float("inf"))
    for _ in range(rounds):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            best[name] = min(best[name], time.perf_counter() - started)
    megabytes = level0_bytes(folder) / 1e6
    speeds = {name: megabytes / seconds for name, seconds in best.items()}
    return {
        "slide": folder.name,
        "mb_raw": round(megabytes, 1),
        "seconds": {name: round(seconds, 3) for name, seconds in best.items()},
        "mb_per_s": {name: round(speed, 1) for name, speed in speeds.items()},
        "mira_vs_floor": round(speeds["mira"] / speeds["floor"], 2),
        "mira_vs_wsidicom": round(speeds["mira"] / speeds["wsidicom"], 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16384x12288", help="generated slides, WxH[,WxH]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folders = [dicom_twin(real_slide(), 240)]
    for size in filter(None, args.sizes.split(",")):
        width, height = (int(side) for side in size.split("x"))
        folders.append(dicom_twin(generated_slide(width, height), 256))
    with tempfile.TemporaryDirectory(dir=args.output) as tmp:
        results = [run(folder, args.rounds, args.workers, Path(tmp)) for folder in folders]
    table = Table(title=f"DICOM WSI -> OME-Zarr, {args.workers} workers, best of {args.rounds}")
    for column in ("slide", "MB raw", *CASES, "mira/floor", "mira/wsidicom"):
        table.add_column(column)
    for result in results:
        speeds = [f"{result['mb_per_s'][name]:.0f} MB/s" for name in CASES]
        table.add_row(
            result["slide"],
            f"{result['mb_raw']:.0f}",
            *speeds,
            f"{result['mira_vs_floor']:.2f} (target {TARGETS['mira_vs_floor']})",
            f"{result['mira_vs_wsidicom']:.2f}",
        )
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    record = {"workers": args.workers, "rounds": args.rounds, "targets": TARGETS, "slides": results}
    (RESULTS / "bench_convert_dicom.json").write_text(json.dumps(record, indent=2) + "\n")
    below = [r["slide"] for r in results if r["mira_vs_floor"] < TARGETS["mira_vs_floor"]]
    if below:
        print(f"below the floor target: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

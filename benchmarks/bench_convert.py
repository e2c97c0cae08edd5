"""Slide -> OME-Zarr conversion speed and memory: mira beside the codec floor and ome-zarr-py.

Run: ``.venv/bin/python -m benchmarks.bench_convert [--sizes 20000x17000,32768x24576]
[--rounds 3] [--workers 2] [--output /tmp]``. Slides: the real Aperio slide (tests/fixtures) and
generated JPEG-tiled SVS-like slides (cached under benchmarks/results/cache). Outputs go to
/dev/shm by default (RAM: the floor writes nothing, so the disk is left out of the comparison;
``--output /tmp`` puts it back). Cases, each run in a fresh
subprocess whose whole process tree is watched (RSS sampled every 20 ms and summed over the tree;
CPU = user + system of the tree during the timed part):

- ``floor``: decode every level-0 tile and encode it with the codec (zstd 1), on ``--workers``
  threads; no Dask, no zarr, no pyramid, no writes. The least work any converter must do.
- ``mira``: ``convert_slide`` as a user calls it (hashes the source; starts a LocalCluster of
  threads in the process when the slide has more than one region, which is timed).
- ``mira-warm``: ``convert_slide`` on an already running cluster (``dask_address``), as the
  ``convert_slides`` flow and ``convert_pending_slides`` use it for a batch.
- ``mira-jpeg``: ``mira`` with ``--codec jpeg``: level 0 keeps the slide's JPEG tiles (copied,
  not re-encoded), the levels above are zstd. Not comparable with the floor's work: it shows
  what passthrough buys.
- ``ome-zarr``: ome-zarr-py's ``write_image`` of a dask array over tifffile's zarr store, with
  the same levels, chunks, shards, zstd level and a 2x2 local mean, on ``--workers`` threads.

Rounds alternate the cases, so a busy machine hurts all of them alike; the best round counts.
Writes benchmarks/results/bench_convert.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
CASES = ("floor", "mira", "mira-warm", "mira-jpeg", "ome-zarr")
DEFAULT_OUTPUT = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
# The targets on 2 cores: mira at least 0.6 of the floor's MB/s and 3x ome-zarr-py, peak
# RSS under 1.5 GB for a 1 GB slide and not growing with the slide (compare the slides' peaks).
TARGETS = {"mira_vs_floor": 0.6, "mira_vs_ome_zarr": 3.0, "peak_rss_mb": 1500}
log = logging.getLogger("bench_convert")


def tree_cpu_seconds() -> float:
    """User + system CPU of this process, its live descendants and the ones it has reaped."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        with suppress(psutil.Error):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


def floor_case(slide: Path, workers: int) -> dict[str, Any]:
    """Decode + encode every level-0 tile, nothing else (mira's own decoder and encoder)."""
    import tifffile

    from tasks.wsi.pyramid import ChunkCodec
    from tasks.wsi.source import full_resolution_page, segment_decoder, slide_geometry

    encode = ChunkCodec("zstd", 1).encoder()
    with tifffile.TiffFile(slide) as tif:
        page = full_resolution_page(tif)
        geometry = slide_geometry(page)
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        decode = segment_decoder(page, geometry)

        def share(first: int) -> int:
            written = 0
            with slide.open("rb") as handle:
                for index in range(first, len(offsets), workers):
                    handle.seek(offsets[index])
                    tile = decode(handle.read(counts[index]), index)
                    written += len(encode(np.ascontiguousarray(tile)))
            return written

        cpu, started = tree_cpu_seconds(), time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            sum(pool.map(share, range(workers)))
        seconds = time.perf_counter() - started
    raw = geometry.height * geometry.width * geometry.samples
    return {"seconds": seconds, "cpu_seconds": tree_cpu_seconds() - cpu, "bytes_raw": raw}


def mira_case(
    slide: Path, out: Path, workers: int, warm: bool, codec: str = "zstd"
) -> dict[str, Any]:
    from storage import open_store
    from tasks.wsi.convert import ConvertOptions, conversion_cluster, convert_slide

    source, target = open_store(slide.parent), open_store(out)
    options = ConvertOptions(workers=workers, codec=codec)
    if not warm:
        cpu, started = tree_cpu_seconds(), time.perf_counter()
        result = convert_slide(source, slide.name, target, "p.ome.zarr", options)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "cpu_seconds": tree_cpu_seconds() - cpu,
            "bytes_raw": result.bytes_raw,
        }
    with conversion_cluster(options) as client:
        client.run(lambda: __import__("tasks.wsi.regions"))  # imports done, as on a running cluster
        warm_options = ConvertOptions(
            workers=workers, dask_address=client.scheduler_info()["address"]
        )
        cpu, started = tree_cpu_seconds(), time.perf_counter()
        result = convert_slide(source, slide.name, target, "p.ome.zarr", warm_options)
        seconds = time.perf_counter() - started
        cpu = tree_cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "bytes_raw": result.bytes_raw}


def ome_zarr_case(slide: Path, out: Path, workers: int) -> dict[str, Any]:
    """ome-zarr-py's writer on the same slide, pyramid and storage settings."""
    import dask
    import dask.array as da
    import tifffile
    import zarr
    from ome_zarr.writer import write_image
    from zarr.codecs import ZstdCodec

    from tasks.wsi.pyramid import PyramidPlan

    cpu, started = tree_cpu_seconds(), time.perf_counter()
    with tifffile.TiffFile(slide) as tif, dask.config.set(scheduler="threads", num_workers=workers):
        height, width, samples = tif.series[0].levels[0].shape
        plan = PyramidPlan.for_slide(height, width, samples, "uint8", 512, 4096, 1024)
        level0 = zarr.open_array(tif.series[0].aszarr(level=0), mode="r")
        image = da.from_zarr(level0).transpose(2, 0, 1).rechunk((samples, 4096, 4096))
        group = zarr.open_group(str(out / "p.ome.zarr"), mode="w")
        write_image(
            image,
            group,
            scale_factors=[2**k for k in range(1, plan.levels)],
            method="local_mean",
            axes="cyx",
            storage_options={
                "chunks": (samples, 512, 512),
                "shards": (samples, 4096, 4096),
                "compressors": ZstdCodec(level=1),
            },
        )
    seconds = time.perf_counter() - started
    raw = height * width * samples
    return {"seconds": seconds, "cpu_seconds": tree_cpu_seconds() - cpu, "bytes_raw": raw}


def run_case(case: str, slide: Path, workers: int, output: Path | None) -> dict[str, Any]:
    """One case in this (child) process, writing into a temporary folder below ``output``."""
    out = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=output))
    try:
        if case == "floor":
            return floor_case(slide, workers)
        if case in ("mira", "mira-warm", "mira-jpeg"):
            codec = "jpeg" if case == "mira-jpeg" else "zstd"
            result = mira_case(slide, out, workers, warm=case == "mira-warm", codec=codec)
        else:
            result = ome_zarr_case(slide, out, workers)
        return {**result, "bytes_out": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(case: str, slide: Path, workers: int, output: Path | None) -> dict[str, Any]:
    """Run one case in a subprocess, sampling its process tree's memory until it exits."""
    command = [sys.executable, "-m", "benchmarks.bench_convert", "--case", case]
    command += ["--slide", str(slide), "--workers", str(workers)]
    command += ["--output", str(output)] if output else []
    quiet = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=quiet)
    watched = psutil.Process(process.pid)
    peak_tree = peak_process = 0
    while process.poll() is None:
        sizes = []
        with suppress(psutil.Error):
            for member in [watched, *watched.children(recursive=True)]:
                with suppress(psutil.Error):
                    sizes.append(member.memory_info().rss)
        peak_tree, peak_process = (
            max(peak_tree, sum(sizes)),
            max(peak_process, max(sizes, default=0)),
        )
        time.sleep(0.02)
    text = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"{case} on {slide.name} failed with exit code {process.returncode}")
    result = json.loads(text.strip().splitlines()[-1])
    return {
        **result,
        "peak_tree_rss_mb": peak_tree / 1e6,
        "peak_process_rss_mb": peak_process / 1e6,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = min(runs, key=lambda run: run["seconds"])
    return {
        "rounds": len(runs),
        "best_seconds": best["seconds"],
        "median_seconds": statistics.median(run["seconds"] for run in runs),
        "mb_per_s": best["bytes_raw"] / best["seconds"] / 1e6,
        "cpu_seconds": best["cpu_seconds"],
        "peak_tree_rss_mb": max(run["peak_tree_rss_mb"] for run in runs),
        "peak_process_rss_mb": max(run["peak_process_rss_mb"] for run in runs),
        "bytes_raw": best["bytes_raw"],
        "bytes_out": best.get("bytes_out", 0),
        "runs": runs,
    }


def bench_slide(
    slide: Path, rounds: int, ome_zarr_rounds: int, workers: int, output: Path | None
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for round_number in range(rounds):
        for case in CASES:
            if case == "ome-zarr" and round_number >= ome_zarr_rounds:
                continue
            runs[case].append(measure(case, slide, workers, output))
            log.info("%s %s: %.2f s", slide.name, case, runs[case][-1]["seconds"])
    cases = {case: summarize(case_runs) for case, case_runs in runs.items() if case_runs}
    rate = {case: summary["mb_per_s"] for case, summary in cases.items()}
    ratios = {
        "mira_vs_floor": rate["mira"] / rate["floor"],
        "mira_warm_vs_floor": rate["mira-warm"] / rate["floor"],
        "mira_jpeg_vs_floor": rate["mira-jpeg"] / rate["floor"],
    }
    if "ome-zarr" in rate:
        ratios["mira_vs_ome_zarr"] = rate["mira"] / rate["ome-zarr"]
        ratios["mira_warm_vs_ome_zarr"] = rate["mira-warm"] / rate["ome-zarr"]
        ratios["mira_jpeg_vs_ome_zarr"] = rate["mira-jpeg"] / rate["ome-zarr"]
    return {
        "slide": slide.name,
        "bytes_raw": cases["floor"]["bytes_raw"],
        "cases": cases,
        "ratios": ratios,
    }


def report(results: list[dict[str, Any]], workers: int, output: str) -> None:
    table = Table(
        title=f"slide -> OME-Zarr, {workers} workers / threads, best of rounds, into {output}"
    )
    for column in (
        "slide",
        "raw MB",
        "case",
        "best s",
        "median s",
        "MB/s",
        "CPU s",
        "peak RSS tree MB",
        "max proc MB",
        "output MB",
    ):
        table.add_column(column, justify="left" if column in ("slide", "case") else "right")
    for result in results:
        for case, s in result["cases"].items():
            table.add_row(
                result["slide"],
                f"{result['bytes_raw'] / 1e6:,.0f}",
                case,
                f"{s['best_seconds']:.2f}",
                f"{s['median_seconds']:.2f}",
                f"{s['mb_per_s']:,.0f}",
                f"{s['cpu_seconds']:.1f}",
                f"{s['peak_tree_rss_mb']:,.0f}",
                f"{s['peak_process_rss_mb']:,.0f}",
                f"{s['bytes_out'] / 1e6:,.0f}" if s["bytes_out"] else "-",
            )
    console = Console(width=160)
    console.print(table)
    for result in results:
        ratios = ", ".join(f"{name} = {value:.2f}" for name, value in result["ratios"].items())
        console.print(f"{result['slide']}: {ratios}")
        console.print(f"  targets: {', '.join(target_checks(result))}")


def target_checks(result: dict[str, Any]) -> list[str]:
    """Each target of ``TARGETS`` this slide's figures can be checked against: met or not."""
    checks = []
    for name in ("mira_vs_floor", "mira_vs_ome_zarr"):
        if name in result["ratios"]:
            value, target = result["ratios"][name], TARGETS[name]
            checks.append(f"{name} {value:.3f} {'>=' if value >= target else '<'} {target}")
    peak, limit = result["cases"]["mira"]["peak_tree_rss_mb"], TARGETS["peak_rss_mb"]
    checks.append(f"peak RSS {peak:,.0f} MB {'<' if peak < limit else '>='} {limit}")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20000x17000,32768x24576", help="generated slides, WxH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ome-zarr-rounds", type=int, default=1, help="ome-zarr is slow")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where outputs go (default: /dev/shm where it exists, so that the converters are "
        "compared, not the disk: the floor writes nothing; else the temp folder). Pass a disk "
        "folder such as /tmp to include the disk",
    )
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("distributed").setLevel(logging.WARNING)
        json.dump(run_case(args.case, args.slide, args.workers, args.output), sys.stdout)
        sys.stdout.write("\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.slides import generated_slide, real_slide

    slides = [real_slide()]
    for size in filter(None, args.sizes.split(",")):
        width, height = (int(side) for side in size.lower().split("x"))
        slides.append(generated_slide(width, height))
    load_before = os.getloadavg()
    results = []
    for number, slide in enumerate(slides):
        ome_rounds = args.ome_zarr_rounds if number < 2 else 0  # the largest slide: mira only
        results.append(bench_slide(slide, args.rounds, ome_rounds, args.workers, args.output))
    report(results, args.workers, str(args.output or tempfile.gettempdir()))
    RESULTS.mkdir(exist_ok=True)
    summary = {
        "workers": args.workers,
        "output": str(args.output or tempfile.gettempdir()),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "targets": TARGETS,
        "slides": results,
    }
    (RESULTS / "bench_convert.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

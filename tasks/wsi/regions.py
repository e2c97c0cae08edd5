"""The tasks of a conversion: each one writes one shard region of one level.

The pyramid is a quad-tree of regions. A level-0 task decodes the source tiles under its region
and writes that whole shard (whole-shard writes: no read-modify-write); a task above level 0
assembles its four children's downsampled results and writes its own shard. Each hands its region
downsampled once (a quarter of its size) to its parent, so no task holds more than its region,
its children's quarters and the encoded shard. The root (the first level that fits one shard)
also writes every smaller level, each as a region whose only child is the level above it.

The same task list runs on Dask (one task per region, ``run_region_task``) or, for a slide that
is a single region, in the calling process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tifffile
import zarr
from numpy.typing import NDArray

from storage import Store, join_key
from tasks.wsi.channels import ChannelReader, level0_reader_maker
from tasks.wsi.dicom_source import DicomRegionReader, dicom_region_readers
from tasks.wsi.ngff import NgffVersion, region_keys, store_objects
from tasks.wsi.openslide_source import OpenSlideRegionReader, openslide_region_readers
from tasks.wsi.pyramid import (
    BUFFERS,
    ChunkCodec,
    PyramidPlan,
    RegionEncoder,
    assemble_chunk,
    chunks_from_planar,
    downsample_mean,
    region_shape,
)
from tasks.wsi.source import RegionReader, shared_slide

Pixels = NDArray[Any]
TaskKind = Literal["source", "combine", "reload"]


@dataclass(frozen=True)
class RegionJob:
    """Everything a worker needs to write regions of one pyramid (small and picklable).

    ``threads`` > 1 decodes tiles and encodes chunks of one region in parallel (the codecs
    release the GIL); Dask workers use 1, as the cluster already runs one task per core.
    """

    source: Store
    source_key: str
    target: Store
    pyramid_key: str
    plan: PyramidPlan
    codec: ChunkCodec
    version: NgffVersion
    threads: int = 1
    passthrough: bool = False  # level 0 stores the source's JPEG tiles as they are
    source_etag: str | None = None  # the version of the source being converted
    dicom: bool = False  # the source is a DICOM whole-slide series (a folder of instances)
    openslide: bool = False  # the source is a format only OpenSlide reads (MRXS, VMS, ...)


@dataclass(frozen=True)
class RegionTask:
    """One region to produce: decode it from the source, combine its children, or (written by
    an interrupted run) reload it. ``children`` index earlier tasks of the same list."""

    kind: TaskKind
    level: int
    row: int
    col: int
    children: tuple[int, ...] = ()


def plan_region_tasks(
    plan: PyramidPlan, version: NgffVersion, written: set[str]
) -> list[RegionTask]:
    """The tasks still needed, children before parents, leaves in Z order.

    ``written`` holds the object keys already stored (relative to the pyramid): a region whose
    objects all exist is not recomputed, only reloaded when its parent still needs it.
    """
    tasks: list[RegionTask] = []

    def done(level: int, row: int, col: int) -> bool:
        keys = set(region_keys(plan, version, level, row, col))
        if level == plan.top:  # the root region also writes the levels below it
            for lower in range(level + 1, plan.levels):
                keys.update(region_keys(plan, version, lower, 0, 0))
        return keys <= written

    def add(task: RegionTask) -> int:
        tasks.append(task)
        return len(tasks) - 1

    def build(level: int, row: int, col: int, needed: bool) -> int | None:
        if done(level, row, col):
            return add(RegionTask("reload", level, row, col)) if needed else None
        if level == 0:
            return add(RegionTask("source", 0, row, col))
        children = [build(level - 1, r, c, True) for r, c in plan.children(level, row, col)]
        indices = tuple(index for index in children if index is not None)
        return add(RegionTask("combine", level, row, col, indices))

    rows, cols = plan.grid(plan.top)
    for row in range(rows):
        for col in range(cols):
            build(plan.top, row, col, needed=False)
    return tasks


def run_region_task(job: RegionJob, task: RegionTask, *quarters: Pixels) -> Pixels | None:
    """Produce one region; returns its quarters for the parent, None at the root.

    The root runs last, once every other region of the slide is done: it uses every core.
    """
    if task.level == job.plan.top and task.kind != "reload":
        job = dataclasses.replace(job, threads=max(job.threads, os.cpu_count() or 1))
    if task.kind == "source":
        return convert_source_region(job, task.row, task.col)
    if task.kind == "reload":
        return reload_region(job, task.level, task.row, task.col)
    return combine_regions(job, task.level, task.row, task.col, *quarters)


def run_tasks_here(job: RegionJob, tasks: list[RegionTask]) -> Iterator[int]:
    """Run the tasks in order in this process, yielding after each; a result is dropped as soon
    as its parent has used it."""
    results: dict[int, Pixels | None] = {}
    for index, task in enumerate(tasks):
        quarters = [results.pop(child) for child in task.children]
        results[index] = run_region_task(job, task, *[q for q in quarters if q is not None])
        yield index


# (cy, cx, chunk out) -> None, or the chunk's stored bytes when they are copied (passthrough)
ChunkFill = Callable[[int, int, Pixels], bytes | None]
FillMaker = Callable[[range], ChunkFill]  # a band of chunk rows -> its fill, used in raster order


def convert_source_region(job: RegionJob, row: int, col: int) -> Pixels | None:
    """Level 0: decode the source tiles under one shard region, chunk by chunk, and write it."""
    plan = job.plan
    y0, x0, height, width = plan.region(0, row, col)
    size = plan.chunk

    def fetch(ranges: list[tuple[int, int]]) -> list[bytes]:
        return job.source.read_ranges(job.source_key, ranges)

    with level0_readers(job) as new_reader:

        def band_fill(rows: range) -> ChunkFill:
            # A reader per band keeps each segment it decoded until the band's later chunks
            # have used it: every segment is decoded once per band.
            reader = new_reader()
            top, bottom = y0 + rows.start * size, min(y0 + rows.stop * size, y0 + height)
            band = (top, x0, bottom, x0 + width)
            reader.prefetch(top, x0, bottom - top, width, fetch)

            def fill(cy: int, cx: int, chunk: Pixels) -> bytes | None:
                y, x = y0 + cy * size, x0 + cx * size
                h, w = min(size, y0 + height - y), min(size, x0 + width - x)
                if job.passthrough:  # a chunk is a tile: keep its bytes, decode for the means
                    return reader.read_tile(y, x, h, w, out=chunk)
                reader.read_chunks(y, x, h, w, size, out=chunk, keep_within=band)
                return None

            return fill

        return stream_region(job, 0, row, col, band_fill)


@contextmanager
def level0_readers(
    job: RegionJob,
) -> Iterator[
    Callable[[], RegionReader | ChannelReader | DicomRegionReader | OpenSlideRegionReader]
]:
    """A maker of level-0 readers for one task: of a DICOM series' frames, of OpenSlide's
    regions, or of a TIFF's tiles."""
    if job.dicom:
        with dicom_region_readers(job.source, job.source_key, job.source_etag) as make:
            yield make
        return
    if job.openslide:
        with openslide_region_readers(job.source, job.source_key) as make_openslide:
            yield make_openslide
        return
    with shared_slide(job.source, job.source_key, job.source_etag) as tif:
        make_tiff = level0_reader_maker(tif)  # the page, or a multiplexed slide's channels
        unlocked = isinstance(tif.filehandle.lock, tifffile.NullContext)
        if job.threads > 1 and unlocked:  # bands read concurrently: seek and read as one step
            tif.filehandle.set_lock(True)
        yield make_tiff


def combine_regions(
    job: RegionJob, level: int, row: int, col: int, *quarters: Pixels
) -> Pixels | None:
    """Levels above 0: the children's quarters (in ``plan.children`` order) make the region."""
    children = dict(zip(job.plan.children(level, row, col), quarters, strict=True))

    def fill(cy: int, cx: int, chunk: Pixels) -> None:
        assemble_chunk(job.plan, level, row, col, children, cy, cx, chunk[0, 0])
        return None

    result = stream_region(job, level, row, col, lambda rows: fill)
    for quarter in quarters:  # nothing reads them again
        BUFFERS.give(quarter)
    return result


def stream_region(
    job: RegionJob, level: int, row: int, col: int, band_fill: FillMaker
) -> Pixels | None:
    """Produce one region chunk by chunk: fill each chunk, encode it, take its 2x2 mean, so a
    chunk is read back from the cache, not from memory, and no region-sized buffer exists. Then
    store the region and return its quarters for the next level (None at the last level); the
    root writes the levels below it itself and returns None.

    With ``job.threads`` > 1 (a one-region slide converted in this process, the root and the
    levels below it), the rows of chunks are cut into one band per thread.
    """
    plan = job.plan
    _, _, height, width = plan.region(level, row, col)
    down, across, size, _, samples = region_shape(plan, level, row, col)
    half = size // 2
    quarters = None
    if level + 1 < plan.levels:  # the means make the next level
        quarters = BUFFERS.take("quarters", (down, across, half, half, samples), plan.dtype)
    bands = _bands(down, job.threads)
    copied = job.passthrough and level == 0
    direct = job.codec.name == "zstd" and job.version == "0.5" and not copied
    with contextlib.ExitStack() as stack:
        out = None
        if direct:  # encoded straight into a reused buffer that becomes the shard
            bound = RegionEncoder.bound(plan, down * across)
            out = stack.enter_context(BUFFERS.borrow("shard", (bound,), np.uint8))
        lanes = [len(rows) * across for rows in bands]  # one per band: bands encode at once
        encoder = RegionEncoder(plan, job.codec, out, job.version == "0.4", lanes)

        def run_band(lane: int, rows: range) -> None:
            fill = band_fill(rows)
            with BUFFERS.borrow("chunk", (1, 1, size, size, samples), plan.dtype) as chunk:
                for cy in rows:
                    for cx in range(across):
                        stored = fill(cy, cx, chunk)
                        if stored is None:  # before the mean touches the padding
                            encoder.add(cy, cx, chunk[0, 0], lane)
                        else:
                            encoder.add_encoded(cy, cx, stored)
                        if quarters is not None:
                            h, w = min(size, height - cy * size), min(size, width - cx * size)
                            downsample_mean(chunk, h, w, quarters[cy : cy + 1, cx : cx + 1])

        with _pool(len(bands)) as pool:
            for _ in (pool.map if pool else map)(run_band, range(len(bands)), bands):
                pass
        store_objects(job.target, job.pyramid_key, _objects(job, level, row, col, encoder))
    if level != plan.top:
        return quarters
    if quarters is not None:
        write_levels_below_root(job, quarters)
    return None


def _bands(rows: int, threads: int) -> list[range]:
    """``range(rows)`` cut into at most ``threads`` contiguous, near-equal, non-empty bands."""
    count = max(1, min(threads, rows))
    edges = [rows * k // count for k in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]


def write_levels_below_root(job: RegionJob, quarters: Pixels) -> None:
    """The root region's quarters make the next level, and so on down. Each smaller level is
    one region whose only child is the region above it, written like any combined region:
    chunk by chunk, in bands on every thread."""
    level: int = job.plan.top + 1
    below: Pixels | None = quarters
    while below is not None:
        below = combine_regions(job, level, 0, 0, below)
        level += 1


def _objects(
    job: RegionJob, level: int, row: int, col: int, encoder: RegionEncoder
) -> dict[str, bytes | Pixels]:
    """One region's objects, keyed relative to the pyramid: its whole shard (v3), or its chunk
    objects (v2)."""
    if job.version == "0.5":
        (key,) = region_keys(job.plan, job.version, level, row, col)
        return {key: encoder.shard()}
    per_side = job.plan.shard // job.plan.chunk
    first_y, first_x = row * per_side, col * per_side
    encoded = encoder.chunk_objects()
    return {f"{level}/0/{first_y + cy}/{first_x + cx}": data for (cy, cx), data in encoded.items()}


def reload_region(job: RegionJob, level: int, row: int, col: int) -> Pixels:
    """A region an interrupted run already wrote: read back, quartered for the parent."""
    y0, x0, height, width = job.plan.region(level, row, col)
    store = job.target.zarr_store(join_key(job.pyramid_key, str(level)), read_only=True)
    array = zarr.open_array(store, mode="r")
    planar = np.asarray(array[:, y0 : y0 + height, x0 : x0 + width])
    return downsample_mean(chunks_from_planar(planar, job.plan.chunk), height, width)


@contextmanager
def _pool(threads: int) -> Iterator[ThreadPoolExecutor | None]:
    if threads <= 1:
        yield None
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="mira-wsi") as pool:
        yield pool

"""The tasks of a conversion: each one writes one shard region of one level.

The pyramid is a quad-tree of regions. A level-0 task decodes the source tiles under its region
and writes that whole shard (whole-shard writes: no read-modify-write); a task above level 0
assembles its four children's downsampled results and writes its own shard. Each hands its region
downsampled once (a quarter of its size) to its parent, so no task holds more than its region,
its children's quarters and the encoded shard. The root (the first level that fits one shard)
also writes every smaller level, in one final pass.

The same task list runs on Dask (one task per region, ``run_region_task``) or, for a slide that
is a single region, in the calling process.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray

from storage import Store, join_key
from tasks.wsi_ngff import NgffVersion, put_objects, region_keys
from tasks.wsi_pyramid import (
    BUFFERS,
    ChunkCodec,
    PyramidPlan,
    assemble_quarters,
    chunks_from_planar,
    downsample_mean,
    encode_chunk_objects,
    encode_shard,
    region_shape,
    shard_bound,
)
from tasks.wsi_source import RegionReader, full_resolution_page, open_slide

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
    """Produce one region; returns its quarters for the parent, None at the root."""
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


def convert_source_region(job: RegionJob, row: int, col: int) -> Pixels | None:
    """Level 0: decode the source tiles under one shard region and write it."""
    y0, x0, height, width = job.plan.region(0, row, col)
    shape = region_shape(job.plan, 0, row, col)
    with (
        open_slide(job.source, job.source_key) as tif,
        _pool(job.threads) as pool,
        BUFFERS.borrow("region", shape, job.plan.dtype) as chunks,
    ):
        reader = RegionReader(tif, full_resolution_page(tif))
        reader.read_chunks(y0, x0, height, width, job.plan.chunk, pool, out=chunks)
        return finish_region(job, 0, row, col, chunks)


def combine_regions(
    job: RegionJob, level: int, row: int, col: int, *quarters: Pixels
) -> Pixels | None:
    """Levels above 0: the children's quarters (in ``plan.children`` order) make the region."""
    children = job.plan.children(level, row, col)
    placed = [(r, c, q) for (r, c), q in zip(children, quarters, strict=True)]
    shape = region_shape(job.plan, level, row, col)
    with BUFFERS.borrow("region", shape, job.plan.dtype) as region:
        assemble_quarters(job.plan, level, row, col, placed, out=region)
        for quarter in quarters:  # copied into the region: nothing reads them again
            BUFFERS.give(quarter)
        return finish_region(job, level, row, col, region)


def reload_region(job: RegionJob, level: int, row: int, col: int) -> Pixels:
    """A region an interrupted run already wrote: read back, quartered for the parent."""
    y0, x0, height, width = job.plan.region(level, row, col)
    store = job.target.zarr_store(join_key(job.pyramid_key, str(level)), read_only=True)
    array = zarr.open_array(store, mode="r")
    planar = np.asarray(array[:, y0 : y0 + height, x0 : x0 + width])
    return downsample_mean(chunks_from_planar(planar, job.plan.chunk), height, width)


def finish_region(job: RegionJob, level: int, row: int, col: int, chunks: Pixels) -> Pixels | None:
    """Write the region, then hand its quarters to the parent (or, at the root, write the rest).

    The encoded region is stored on a second thread while this one downsamples: the write (a
    copy into the page cache, or a PUT) overlaps the 2x2 means instead of adding to them.
    """
    with (
        _encoded_region(job, level, row, col, chunks) as objects,
        ThreadPoolExecutor(1, thread_name_prefix="mira-wsi-put") as writer,
    ):
        stored = writer.submit(put_objects, job.target.zarr_store(job.pyramid_key), objects)
        quarters = downsample_region(job, level, row, col, chunks)
        stored.result()
    return quarters


def downsample_region(
    job: RegionJob, level: int, row: int, col: int, chunks: Pixels
) -> Pixels | None:
    """The region's quarters for its parent; at the root, every smaller level written instead."""
    plan = job.plan
    _, _, height, width = plan.region(level, row, col)
    if level < plan.top:
        down, across, samples, size = chunks.shape[:4]
        out = BUFFERS.take("quarters", (down, across, samples, size // 2, size // 2), chunks.dtype)
        return downsample_mean(chunks, height, width, out)
    for lower in range(level + 1, plan.levels):  # the root: each smaller level is one shard
        quarters = downsample_mean(chunks, height, width)
        chunks = assemble_quarters(plan, lower, 0, 0, [(0, 0, quarters)])
        write_region(job, lower, 0, 0, chunks)
        height, width = plan.shapes[lower]
    return None


def write_region(job: RegionJob, level: int, row: int, col: int, chunks: Pixels) -> None:
    """Store one region: a single whole-shard object (v3), or its chunk objects (v2)."""
    with _encoded_region(job, level, row, col, chunks) as objects:
        put_objects(job.target.zarr_store(job.pyramid_key), objects)


@contextmanager
def _encoded_region(
    job: RegionJob, level: int, row: int, col: int, chunks: Pixels
) -> Iterator[dict[str, bytes | Pixels]]:
    """One region's objects, keyed relative to the pyramid: its whole shard (v3), encoded into a
    reused buffer that is valid inside the block, or its chunk objects (v2)."""
    if job.version == "0.5":
        (key,) = region_keys(job.plan, job.version, level, row, col)
        if job.codec.name == "zstd" and job.threads <= 1:
            with BUFFERS.borrow("shard", (shard_bound(chunks, job.plan),), np.uint8) as scratch:
                yield {key: encode_shard(chunks, job.plan, job.codec, out=scratch)}
            return
        with _pool(job.threads) as pool:
            yield {key: encode_shard(chunks, job.plan, job.codec, pool)}
        return
    with _pool(job.threads) as pool:
        encoded = encode_chunk_objects(chunks, job.codec, pool)
    per_side = job.plan.shard // job.plan.chunk
    first_y, first_x = row * per_side, col * per_side
    yield {f"{level}/0/{first_y + cy}/{first_x + cx}": data for (cy, cx), data in encoded.items()}


@contextmanager
def _pool(threads: int) -> Iterator[ThreadPoolExecutor | None]:
    if threads <= 1:
        yield None
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="mira-wsi") as pool:
        yield pool

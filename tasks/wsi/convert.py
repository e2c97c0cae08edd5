"""Whole-slide images to OME-Zarr pyramids: lossless, streamed shard by shard, in parallel on Dask.

``convert_slide`` turns one TIFF slide (Aperio SVS, pyramidal TIFF/BigTIFF, OME-TIFF) into an
OME-NGFF multiscale image (0.5/Zarr v3 sharded by default, 0.4/Zarr v2 on request);
``convert_pending_slides`` does it for every ``slides/<slide>.tiff`` of the research store whose
``pyramids/<slide>.ome.zarr`` is missing or made from other content.

Publication is atomic for readers: level arrays first, the root group document last. That root
document carries the completion record (``attributes.mira``: source SHA-256, source size and
etag, options, mira and layout versions, the slide's non-identifying metadata); a pyramid without
it is treated as absent. A killed run leaves level arrays stamped with a run fingerprint (source
size and etag + options); the next run with the same fingerprint keeps the shards already written
and reads them back instead of decoding the source again, so it ends with the same bytes. The
source's SHA-256 (for the record) is computed while the regions are converted.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dask
import numpy as np
from distributed import Client, Future, as_completed, fire_and_forget

import mira
from mira.errors import InvalidInput
from storage import ObjectInfo, Store, join_key
from tasks import layout
from tasks.parallel import dask_client
from tasks.wsi.channels import level0_geometry, level0_pages
from tasks.wsi.dicom_source import (
    DICOM_FORMAT,
    dicom_level0_codecs,
    dicom_slide_folders,
    is_dicom_slide,
    series_info,
    series_sha256,
    shared_dicom_slide,
)
from tasks.wsi.jpeg import level0_codecs
from tasks.wsi.ngff import (
    LAYOUT_VERSION,
    create_level_arrays,
    level_fingerprints,
    publish_root,
    read_completion_record,
    root_attributes,
    run_fingerprint,
)
from tasks.wsi.openslide_source import (
    is_openslide_slide,
    open_openslide,
    openslide_geometry,
    openslide_metadata,
)
from tasks.wsi.pyramid import ChunkCodec, PyramidPlan
from tasks.wsi.record import CompletionRecord
from tasks.wsi.regions import (
    RegionJob,
    RegionTask,
    plan_region_tasks,
    run_region_task,
    run_tasks_here,
)
from tasks.wsi.source import (
    SlideGeometry,
    SlideMetadata,
    open_slide,
    slide_metadata,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
ROOT_DOCUMENTS = ("zarr.json", ".zattrs", ".zgroup")
PARENT_PRIORITY = 1_000_000_000
# The in-process cluster's own housekeeping runs on the event loop, holding the GIL the region
# threads need between codec calls: sampling their stacks every 10 ms, system metrics every
# 0.5 s and loop-blockage ticks every 20 ms cost several percent of a conversion, measured.
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "1s",
}


@dataclass(frozen=True)
class ConvertOptions:
    """How pyramids are written (the output-shaping fields) and where the work runs."""

    ngff_version: Literal["0.5", "0.4"] = "0.5"
    chunk: int = 512  # chunk side in px; a chunk holds every channel: (c, chunk, chunk)
    shard: int = 4096  # shard side in px per level, a multiple of chunk (0.5 only)
    # zstd, blosc-zstd, blosc-lz4 (alias lz4), gzip, none: all lossless; jpeg: level 0 keeps
    # the slide's own JPEG tiles (passthrough, chunks = tiles), the other levels are zstd.
    codec: str = "zstd"
    codec_level: int = 1
    min_level_side: int = 1024  # add levels until the longest side is at most this
    dask_address: str = ""  # an existing scheduler; empty: a LocalCluster for the call
    workers: int = 0  # LocalCluster threads; 0: one per core

    def settings(self) -> dict[str, Any]:
        """The fields that decide the output bytes (not where the work runs)."""
        fields = asdict(self)
        del fields["dask_address"], fields["workers"]
        return fields

    @property
    def passthrough(self) -> bool:
        """Level 0 as the slide's JPEG tiles, copied (``codec="jpeg"``)."""
        return self.codec == "jpeg"

    def chunk_codec(self) -> ChunkCodec:
        """The codec chunks are encoded with (every level above 0 with passthrough)."""
        return ChunkCodec("zstd" if self.passthrough else self.codec, self.codec_level)


@dataclass(frozen=True)
class ConversionResult:
    """What one conversion did; ``skipped`` when the pyramid was already current."""

    source_key: str
    source_sha256: str
    pyramid_key: str
    levels: int
    shape: tuple[int, int]
    mpp: float | None
    bytes_raw: int
    seconds: float
    skipped: bool


def convert_slide(
    source: Store,
    source_key: str,
    target: Store,
    pyramid_key: str,
    options: ConvertOptions,
    progress: Progress | None = None,
    source_sha256: str | None = None,
) -> ConversionResult:
    """Convert one slide unless its pyramid is already current (made from the same content with
    the same output options).

    ``source_sha256`` spares hashing the source when the caller knows it (the catalog does).
    ``progress(done, total)`` is called after each region task.
    """
    started = time.perf_counter()
    info = _source_info(source, source_key)
    record = read_completion_record(target, pyramid_key)
    sha = _current_sha(source, source_key, info, record, source_sha256)
    if record is not None and _is_current(record, sha, options):
        log.info("%s is current, skipped", target.url_of(pyramid_key))
        return _skipped(source_key, pyramid_key, record, started)
    work = _describe(source, source_key, info, sha, target, pyramid_key, options, started)
    if _runs_here(work, options):
        return _convert(None, work, options, progress)
    with conversion_cluster(options) as client:
        return _convert(client, work, options, progress)


def convert_pending_slides(research: Store, options: ConvertOptions) -> list[ConversionResult]:
    """Convert every ``slides/<slide>.tiff`` without a current ``pyramids/<slide>.ome.zarr``,
    and every DICOM whole-slide series ``dicom/<patient>/<study>/<series>`` of the catalog
    without a current ``pyramids/<series>.ome.zarr``.

    Returns one result per slide, ``skipped`` for those already current. One Dask cluster serves
    every slide that needs one; none is started when nothing is pending.
    """
    results: list[ConversionResult] = []
    pending: list[_Work] = []
    sources = [(info, layout.pyramid_key(info.key)) for info in _slide_objects(research)]
    sources += [
        (series_info(research, folder), layout.dicom_pyramid_key(folder))
        for folder in dicom_slide_folders(research)
    ]
    for info, pyramid_key in sources:
        started = time.perf_counter()
        record = read_completion_record(research, pyramid_key)
        sha = _current_sha(research, info.key, info, record, None)
        if record is not None and _is_current(record, sha, options):
            results.append(_skipped(info.key, pyramid_key, record, started))
        else:
            work = _describe(research, info.key, info, sha, research, pyramid_key, options, started)
            pending.append(work)
    results += [
        _convert(None, work, options, None) for work in pending if _runs_here(work, options)
    ]
    clustered = [work for work in pending if not _runs_here(work, options)]
    if clustered:
        with conversion_cluster(options) as client:
            results += [_convert(client, work, options, None) for work in clustered]
    return sorted(results, key=lambda result: result.source_key)


@dataclass(frozen=True)
class _Work:
    """One slide to convert, described once its source has been opened."""

    source: Store
    source_key: str
    info: ObjectInfo
    sha256: str | None  # None: hashed while the conversion runs
    target: Store
    pyramid_key: str
    plan: PyramidPlan
    slide: SlideMetadata
    started: float
    level0_codecs: list[Any] | None = None  # passthrough: level 0's transpose + JPEG codecs


@contextlib.contextmanager
def conversion_cluster(options: ConvertOptions) -> Iterator[Client]:
    """The Dask client conversions run on: ``options.dask_address``, else a LocalCluster of one
    worker with ``options.workers`` threads (0: one per core) in this process. A flow converting
    many slides can hold one open.

    Threads, not processes, by default: decoding, encoding, the 2x2 means and the copies all
    release the GIL, so threads use every core, while a cluster of processes costs seconds to
    start and moves every region's downsampled quarter between processes (measured on a 1 GB
    slide: starting two worker processes alone took about 1 s of a 4.7 s conversion).
    """
    threads = options.workers or os.cpu_count() or 1
    with (
        dask.config.set(QUIET_LOCAL_CLUSTER),
        dask_client(options.dask_address, 1, threads, processes=False) as client,
    ):
        if options.dask_address:  # remote workers import the codecs while this process prepares
            for worker in client.scheduler_info()["workers"]:
                fire_and_forget(client.submit(_load_region_code, workers=[worker], pure=False))
        yield client


@contextlib.contextmanager
def _older_objects_left_to_gc_later() -> Iterator[None]:
    """Keep the objects that exist before a conversion out of the cyclic garbage collector's
    passes until it ends (``gc.freeze``, then ``gc.unfreeze``: nothing is lost, it is only
    examined later).

    A process that has imported Dask and zarr holds about 90,000 objects. A full collection
    walks all of them, and one often falls inside a conversion: measured, it added 25-30 ms
    to the 70 ms conversion of a 20 MB slide, and about 1% to a 1 GB one.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _load_region_code() -> None:
    importlib.import_module("tasks.wsi.regions")


def _runs_here(work: _Work, options: ConvertOptions) -> bool:
    """A slide that is one region is one task: running it in this process (its decoding and
    encoding on threads) beats starting a cluster, which costs seconds."""
    return not options.dask_address and work.plan.grid(0) == (1, 1)


def _slide_objects(research: Store) -> Iterator[ObjectInfo]:
    for info in research.list(f"{layout.SLIDES}/"):
        try:
            layout.slide_id_of(info.key)
        except InvalidInput:
            continue  # not a research slide (a stray object, a sub-folder)
        yield info


def _current_sha(
    source: Store, key: str, info: ObjectInfo, record: CompletionRecord | None, known: str | None
) -> str | None:
    """The source's SHA-256 when it decides whether to convert: given, or the record's when the
    object is provably unchanged since (same etag and size: it was not rewritten), else computed
    by streaming the object. Without a record nothing is decided by it: None, and the hash is
    computed while the conversion runs (a pass over the whole slide, on a core that would idle).
    """
    if known:
        return known
    if record is None:
        return None if info.etag else _source_sha256(source, key)
    if info.etag and (record.source_etag, record.source_size) == (info.etag, info.size):
        return record.source_sha256
    return _source_sha256(source, key)


def _source_info(source: Store, key: str) -> ObjectInfo:
    """The slide file's info, or a DICOM series folder's (its instances taken together)."""
    return series_info(source, key) if is_dicom_slide(source, key) else source.info(key)


def _source_sha256(source: Store, key: str) -> str:
    return series_sha256(source, key) if is_dicom_slide(source, key) else source.sha256(key)


def _is_current(record: CompletionRecord, sha: str | None, options: ConvertOptions) -> bool:
    """Whether the published pyramid was made from the same content with the same options."""
    return sha is not None and record.source_sha256 == sha and record.options == options.settings()


def _source_identity(work: _Work) -> str:
    """What a run fingerprint names the source by: its size and etag (any rewrite changes the
    etag: S3 ETags follow the content, local ones the modification time), else its hash."""
    if work.info.etag:
        return f"size={work.info.size} etag={work.info.etag}"
    assert work.sha256 is not None  # no etag: hashed up front by _current_sha
    return work.sha256


def _skipped(
    source_key: str, pyramid_key: str, record: CompletionRecord, started: float
) -> ConversionResult:
    shape = record.shape or (0, 0, 0)
    return ConversionResult(
        source_key=source_key,
        source_sha256=record.source_sha256,
        pyramid_key=pyramid_key,
        levels=record.levels,
        shape=(shape[-2], shape[-1]),
        mpp=record.mpp,
        bytes_raw=record.bytes_raw,
        seconds=time.perf_counter() - started,
        skipped=True,
    )


def _convert(
    client: Client | None, work: _Work, options: ConvertOptions, progress: Progress | None
) -> ConversionResult:
    """Write every region (on Dask, or here without a client), then publish the root."""
    plan, slide = work.plan, work.slide
    threads = 1 if client is not None else options.workers or os.cpu_count() or 1
    job = RegionJob(
        work.source,
        work.source_key,
        work.target,
        work.pyramid_key,
        plan,
        options.chunk_codec(),
        options.ngff_version,
        threads,
        passthrough=options.passthrough,
        source_etag=work.info.etag,
        dicom=slide.format == DICOM_FORMAT,
        openslide=is_openslide_slide(work.source, work.source_key),
    )
    with (
        _older_objects_left_to_gc_later(),
        ThreadPoolExecutor(1, thread_name_prefix="mira-wsi-sha256") as hasher,
    ):
        hashing = (
            hasher.submit(_source_sha256, work.source, work.source_key) if not work.sha256 else None
        )
        fingerprint = run_fingerprint(_source_identity(work), options.settings())
        tasks = plan_region_tasks(
            plan, job.version, _prepare_target(job, fingerprint, work.level0_codecs)
        )
        if client is None:
            for count, _ in enumerate(run_tasks_here(job, tasks), start=1):
                if progress is not None:
                    progress(count, len(tasks))
        else:
            _run_on_dask(client, job, tasks, progress)
        sha256 = hashing.result() if hashing is not None else work.sha256
    assert sha256 is not None
    record = CompletionRecord(
        source_key=work.source_key,
        source_sha256=sha256,
        source_size=work.info.size,
        source_etag=work.info.etag,
        mira_version=mira.__version__,
        layout_version=LAYOUT_VERSION,
        options=options.settings(),
        slide=slide.record(),
        levels=plan.levels,
        shape=plan.array_shape(0),
        bytes_raw=_bytes_raw(plan),
    )
    attributes = root_attributes(plan, slide, options.ngff_version, record)
    publish_root(work.target, work.pyramid_key, options.ngff_version, attributes)
    seconds = time.perf_counter() - work.started
    log.info(
        "%s: %d levels, %.1f MB raw in %.1f s",
        work.target.url_of(work.pyramid_key),
        plan.levels,
        _bytes_raw(plan) / 1e6,
        seconds,
    )
    return ConversionResult(
        source_key=work.source_key,
        source_sha256=sha256,
        pyramid_key=work.pyramid_key,
        levels=plan.levels,
        shape=plan.shapes[0],
        mpp=slide.mpp_x,
        bytes_raw=_bytes_raw(plan),
        seconds=seconds,
        skipped=False,
    )


def _describe(
    source: Store,
    source_key: str,
    info: ObjectInfo,
    sha: str | None,
    target: Store,
    pyramid_key: str,
    options: ConvertOptions,
    started: float,
) -> _Work:
    """Open the slide once to size the pyramid and pick up its metadata."""
    if options.ngff_version not in ("0.5", "0.4"):
        raise InvalidInput(f"unsupported NGFF version {options.ngff_version!r}: use 0.5 or 0.4")
    options.chunk_codec()  # an unknown codec fails here, before any work
    if options.passthrough and options.ngff_version != "0.5":
        raise InvalidInput("--codec jpeg needs NGFF 0.5 (Zarr v3 has the transpose codec)")
    chunk, shard = options.chunk, options.shard
    level0: list[Any] | None
    if is_dicom_slide(source, source_key):  # a folder: a DICOM whole-slide series
        dicom = shared_dicom_slide(source, source_key, info.etag)
        geometry, slide = dicom.geometry(), dicom.metadata
        level0 = dicom_level0_codecs(dicom) if options.passthrough else None
    elif is_openslide_slide(source, source_key):  # MRXS and others: conversion only
        if options.passthrough:
            raise InvalidInput("--codec jpeg needs a TIFF or DICOM slide's own JPEG tiles")
        with open_openslide(source, source_key) as other:
            geometry, slide, level0 = openslide_geometry(other), openslide_metadata(other), None
    else:
        geometry, slide, level0 = _describe_tiff(source, source_key, options)
    if level0 is not None:  # passthrough: a chunk is a tile; a shard, whole tiles
        chunk = geometry.segment_width
        shard = chunk * max(1, options.shard // chunk)
    plan = PyramidPlan.for_slide(
        geometry.height,
        geometry.width,
        geometry.samples,
        geometry.dtype,
        chunk,
        shard,
        options.min_level_side,
    )
    return _Work(source, source_key, info, sha, target, pyramid_key, plan, slide, started, level0)


def _describe_tiff(
    source: Store, source_key: str, options: ConvertOptions
) -> tuple[SlideGeometry, SlideMetadata, list[Any] | None]:
    """A TIFF slide's level-0 geometry, metadata and (passthrough) level-0 codecs."""
    with open_slide(source, source_key) as tif:
        pages = level0_pages(tif)  # one, or a multiplexed slide's channel pages
        if options.passthrough and len(pages) > 1:
            raise InvalidInput("--codec jpeg needs one RGB or grey page at level 0, not channels")
        level0 = level0_codecs(pages[0]) if options.passthrough else None
        return level0_geometry(pages), slide_metadata(tif, pages[0]), level0


def _bytes_raw(plan: PyramidPlan) -> int:
    c, h, w = plan.array_shape(0)
    return c * h * w * np.dtype(plan.dtype).itemsize


def _prepare_target(
    job: RegionJob, fingerprint: str, level0_codecs: list[Any] | None = None
) -> set[str]:
    """Keep the partial output of an interrupted run with the same fingerprint; wipe any other.

    Returns the keys (relative to the pyramid) already written.
    """
    target, prefix = job.target, job.pyramid_key
    for name in ROOT_DOCUMENTS:  # a pyramid of other content: unpublish it before anything else
        if target.exists(join_key(prefix, name)):
            target.delete(join_key(prefix, name))
    target.remove_incomplete(prefix)  # temporary files of writes a killed run cut short
    keys = _pyramid_keys(target, prefix)
    if keys and level_fingerprints(target, prefix, job.plan) == {fingerprint}:
        log.info("resuming %s", target.url_of(prefix))
        return keys
    for key in sorted(keys):
        target.delete(join_key(prefix, key))
    if keys:
        log.info("removed %d stale objects of %s", len(keys), target.url_of(prefix))
    create_level_arrays(
        target, prefix, job.plan, job.codec, job.version, fingerprint, level0_codecs
    )
    return set()


def _pyramid_keys(target: Store, pyramid_key: str) -> set[str]:
    """Every key inside the pyramid folder, relative to it (not siblings sharing the prefix)."""
    folder = pyramid_key.rstrip("/") + "/"
    return {
        info.key[len(folder) :] for info in target.list(pyramid_key) if info.key.startswith(folder)
    }


def _run_on_dask(
    client: Client, job: RegionJob, tasks: list[RegionTask], progress: Progress | None
) -> None:
    """Submit every region task and wait, holding no results on the client.

    Priorities: leaves run in Z order (earlier first) and any parent runs before any pending
    leaf, so each 2x2 group is combined, and its children's quarters freed, as soon as it is
    complete; memory stays bounded by the tree's depth, not the slide's size.
    """
    run = uuid.uuid4().hex[:12]
    futures: list[Future] = []
    for number, task in enumerate(tasks):
        children = [futures[child] for child in task.children]
        futures.append(
            client.submit(
                run_region_task,
                job,
                task,
                *children,
                key=f"wsi-{run}-{task.level}-{task.row}-{task.col}",
                priority=task.level * PARENT_PRIORITY - number,
                pure=False,
            )
        )
    completed = as_completed(futures)
    futures.clear()  # a result is freed as soon as its parent has consumed it
    for count, future in enumerate(completed, start=1):
        if future.status == "error":
            future.result()  # re-raises the task's exception
        if progress is not None:
            progress(count, len(tasks))

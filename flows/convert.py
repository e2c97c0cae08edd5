"""Stage 3: every de-identified slide without a current pyramid becomes an OME-Zarr pyramid."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.params import StoreParams
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from storage import open_store
from tasks.dataset import write_part
from tasks.wsi import ConversionResult, ConvertOptions, convert_pending_slides


class ConvertParams(BaseModel):
    """How pyramids are written; the defaults suit viewers and training loaders alike."""

    ngff_version: Literal["0.5", "0.4"] = Field(
        "0.5", description="OME-NGFF version: 0.5 (Zarr v3, sharded) or 0.4 (Zarr v2)."
    )
    chunk: int = Field(512, ge=64, description="Chunk side in pixels (every channel in a chunk).")
    shard: int = Field(4096, ge=64, description="Shard side in pixels (a multiple of the chunk).")
    codec: str = Field(
        "zstd",
        description="Lossless codec: zstd, blosc-zstd, lz4, gzip or none; or jpeg: level 0 keeps "
        "the slides' own JPEG tiles (passthrough, NGFF 0.5), the other levels zstd.",
    )


@task(name="convert-pending-slides", **RETRY_POLICY)
def convert_pending_task(settings: Settings, params: ConvertParams) -> list[ConversionResult]:
    """Convert the slides that need it (tiles spread over Dask inside) and catalog the pyramids."""
    research = open_store(settings.research_url, settings.s3_config())
    options = ConvertOptions(
        ngff_version=params.ngff_version,
        chunk=params.chunk,
        shard=params.shard,
        codec=params.codec,
        dask_address=settings.dask_address,
        workers=settings.dask_workers,
    )
    results = convert_pending_slides(research, options)
    for result in results:
        slide_id = result.source_key.rsplit("/", 1)[-1].removesuffix(".tiff")
        write_part(research, "pyramids", slide_id, [pyramid_row(result)])
    return results


def pyramid_row(result: ConversionResult) -> dict[str, Any]:
    """The catalog row of one pyramid."""
    return {
        "slide_key": result.source_key,
        "pyramid_key": result.pyramid_key,
        "source_sha256": result.source_sha256,
        "levels": result.levels,
        "height": result.shape[0],
        "width": result.shape[1],
        "mpp": result.mpp,
    }


@flow(name="convert", log_prints=False)
def convert_slides(
    params: ConvertParams | None = None, stores: StoreParams | None = None
) -> dict[str, Any]:
    """Convert every de-identified slide that has no current pyramid; returns what was done."""
    settings = (stores or StoreParams()).settings()
    results = convert_pending_task(settings, params or ConvertParams())
    converted = [r for r in results if not r.skipped]
    get_run_logger().info(
        "%d slides converted, %d already current", len(converted), len(results) - len(converted)
    )
    return {
        "converted": len(converted),
        "current": len(results) - len(converted),
        "slides": [dataclasses.asdict(r) for r in results],
    }

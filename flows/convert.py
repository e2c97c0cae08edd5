"""Stage 3: every de-identified slide without a current pyramid becomes an OME-Zarr pyramid."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.params import StoreParams
from flows.reporting import publish_summary, run_name
from flows.retry import RETRY_POLICY
from flows.summaries import ConvertSummary
from mira.settings import Settings
from tasks.wsi import ConversionResult, ConvertOptions, catalog_pyramids, convert_pending_slides


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
    research = settings.research()
    options = ConvertOptions(
        ngff_version=params.ngff_version,
        chunk=params.chunk,
        shard=params.shard,
        codec=params.codec,
        dask_address=settings.dask_address,
        workers=settings.dask_workers,
    )
    results = convert_pending_slides(research, options)
    catalog_pyramids(research, results)
    return results


@flow(name="convert", flow_run_name=run_name("convert"), log_prints=False)
def convert_slides(
    params: ConvertParams | None = None,
    stores: StoreParams | None = None,
    batch: str | None = None,
) -> ConvertSummary:
    """Convert every de-identified slide that has no current pyramid; returns what was done.

    Args:
        params: How pyramids are written.
        stores: Where the stores are; empty fields use the worker's MIRA_* settings.
        batch: The batch whose arrival started this run (names the run); every pending slide
            of the research store is converted, whichever batch brought it.
    """
    settings = (stores or StoreParams()).settings()
    results = convert_pending_task(settings, params or ConvertParams())
    converted = [r for r in results if not r.skipped]
    current = len(results) - len(converted)
    if converted or not current:
        message = f"{len(converted)} slides converted, {current} already current"
    else:
        message = f"all {current} slides already converted"
    get_run_logger().info("%s", message)
    publish_summary(
        "convert",
        batch or "all",
        "slide conversion",
        [("result", message), *((r.pyramid_key, f"{r.levels} levels") for r in converted)],
    )
    return ConvertSummary(
        converted=len(converted), current=len(results) - len(converted), slides=tuple(results)
    )

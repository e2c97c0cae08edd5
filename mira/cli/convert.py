"""``mira convert``: one whole-slide image to an OME-Zarr pyramid."""

from __future__ import annotations

from typing import Annotated

import typer

from mira.cli.common import console, out, settings_of
from mira.cli.progress import count_progress


def convert(
    ctx: typer.Context,
    slide: Annotated[
        str,
        typer.Argument(
            help="Slide file or URL (SVS, pyramidal TIFF, OME-TIFF, vendor TIFF), or the folder "
            "of a DICOM whole-slide series."
        ),
    ],
    output: Annotated[str, typer.Argument(help="Pyramid folder or URL, e.g. out/slide.ome.zarr.")],
    ngff: Annotated[
        str, typer.Option("--ngff", help="OME-NGFF version: 0.5 (Zarr v3) or 0.4 (Zarr v2).")
    ] = "0.5",
    chunk: Annotated[int, typer.Option(min=64, help="Chunk side in pixels.")] = 512,
    shard: Annotated[int, typer.Option(min=64, help="Shard side in pixels (NGFF 0.5).")] = 4096,
    codec: Annotated[
        str,
        typer.Option(
            help="Lossless: zstd, blosc-zstd, lz4, blosc-lz4, gzip or none. jpeg: level 0 keeps "
            "the slide's own JPEG tiles, copied without decoding (chunks = tiles; NGFF 0.5; "
            "read with the imagecodecs_jpeg Zarr codec); the other levels are zstd."
        ),
    ] = "zstd",
    workers: Annotated[
        int, typer.Option(min=0, help="Threads of the local Dask cluster; 0: one per core.")
    ] = 0,
) -> None:
    """Convert SLIDE into a lossless, sharded OME-Zarr multiscale pyramid at OUTPUT.

    Level 0 equals the slide's decoded level 0 pixel for pixel; each further level is the
    2x2 mean of the one above until the longest side is at most 1024 px. The work runs on
    Dask (MIRA_DASK_ADDRESS, else a LocalCluster); the pyramid appears only when complete,
    and a pyramid already made from the same slide content with the same options is left as
    it is. With --codec jpeg, level 0 is the scanner's JPEG tiles, as scanned.
    """
    from storage import open_object
    from tasks.wsi import ConvertOptions, convert_slide

    if ngff not in ("0.5", "0.4"):
        raise typer.BadParameter("--ngff must be 0.5 or 0.4")
    settings = settings_of(ctx)
    source, source_key = open_object(slide, settings.s3_config())
    target, pyramid_key = open_object(output, settings.s3_config())
    options = ConvertOptions(
        ngff_version="0.5" if ngff == "0.5" else "0.4",
        chunk=chunk,
        shard=shard,
        codec=codec,
        dask_address=settings.dask_address,
        workers=workers or settings.dask_workers,
    )
    with count_progress(console, "converting") as progress:
        result = convert_slide(source, source_key, target, pyramid_key, options, progress=progress)
    if result.skipped:
        out.print(
            f"{output} is already current (made from the same slide content with the same "
            "options); nothing to do"
        )
        return
    mb_raw = result.bytes_raw / 1e6
    out.print(
        f"{output}: {result.levels} levels, level 0 {result.shape[1]} x {result.shape[0]} px, "
        f"{mb_raw:,.0f} MB raw in {result.seconds:.1f} s ({mb_raw / result.seconds:,.0f} MB/s)"
    )


def export_dicom(
    ctx: typer.Context,
    slide: Annotated[
        str, typer.Argument(help="De-identified slide file or URL (TIFF with JPEG tiles).")
    ],
    output: Annotated[str, typer.Argument(help="Folder or URL for the series' instances.")],
    patient_id: Annotated[
        str, typer.Option(help="Pseudonymous Patient ID to carry (the research catalog's).")
    ] = "",
) -> None:
    """Write SLIDE as a DICOM whole-slide series (VL Whole Slide Microscopy) in OUTPUT.

    One instance per JPEG-tiled level, its tiles copied as the frames (not decoded), for a
    DICOMweb viewer or archive. The series carries the slide's pixel size and UIDs derived
    from its content, and no identifier but --patient-id: give it a de-identified slide.
    """
    from storage import open_object, open_store
    from tasks.wsi import write_dicom_slide

    settings = settings_of(ctx)
    source, source_key = open_object(slide, settings.s3_config())
    target = open_store(output, settings.s3_config())
    result = write_dicom_slide(source, source_key, target, "", patient_id=patient_id)
    levels = ", ".join(f"{w} x {h}" for h, w in result.levels)
    out.print(f"{output}: series {result.series_uid}, {len(result.keys)} instances ({levels})")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export-dicom")(export_dicom)

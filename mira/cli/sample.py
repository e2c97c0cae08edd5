"""``mira sample-data``: a realistic demo drop zone with synthetic PHI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mira.cli.common import console, out
from mira.cli.progress import step_progress


def sample_data(
    directory: Annotated[Path, typer.Argument(help="Drop-zone folder to write the batches into.")],
    patients: Annotated[int, typer.Option(min=1, help="Synthetic patients.")] = 3,
    slides: Annotated[int, typer.Option(min=0, help="Whole-slide images (Aperio SVS).")] = 1,
    slide_size: Annotated[
        int, typer.Option(min=512, help="Slide level-0 side in pixels.")
    ] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical files.")] = 0,
    ndpi_slides: Annotated[
        int, typer.Option(min=0, help="More slides in Hamamatsu NDPI layout (at most 4096 px).")
    ] = 0,
    dicom_slides: Annotated[
        int,
        typer.Option(
            min=0,
            help="More slides as DICOM whole-slide series (VL Whole Slide Microscopy, one "
            "folder each, at most 4096 px).",
        ),
    ] = 0,
) -> None:
    """Write upload batches built from pydicom's real DICOM files and generated slides.

    Every file carries synthetic PHI (patient module, descriptors, private tags, nested
    sequences, burned-in text, slide labels) for the de-identification stage to remove.
    """
    from tasks.sample import generate_sample_data

    with step_progress(console) as progress:
        summary = generate_sample_data(
            directory,
            patients=patients,
            slides=slides,
            slide_size=slide_size,
            seed=seed,
            progress=progress,
            ndpi_slides=ndpi_slides,
            dicom_slides=dicom_slides,
        )
    table = Table(title=f"sample drop zone: {summary.root}")
    table.add_column("batch")
    for batch in summary.batches:
        table.add_row(batch)
    out.print(table)
    out.print(
        f"{summary.dicom_files} DICOM files, {summary.slides} slides, "
        f"{summary.broken_files} broken files; planted identifiers: {summary.phi_truth}"
    )


def register(app: typer.Typer) -> None:
    app.command("sample-data")(sample_data)

"""``mira deid`` (de-identify a folder or store prefix) and ``mira phi-scan`` (the leak check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mira.cli.common import console, out, settings_of
from mira.cli.progress import step_progress
from mira.errors import PhiLeak


def deid(
    ctx: typer.Context,
    input_url: Annotated[str, typer.Argument(metavar="INPUT", help="Folder or store URL to read.")],
    output_url: Annotated[
        str, typer.Argument(metavar="OUTPUT", help="Folder or store URL to write.")
    ],
    quarantine: Annotated[
        str, typer.Option("--quarantine", help="Folder or URL for files that cannot be made safe.")
    ],
    profile: Annotated[
        Path | None, typer.Option(help="De-identification profile file [env: MIRA_DEID_PROFILE].")
    ] = None,
) -> None:
    """De-identify every DICOM file and slide in INPUT into OUTPUT, laid out by pseudonyms.

    Headers follow the PS3.15 Basic Profile with the project's options; UIDs and patient IDs
    become keyed pseudonyms (secret from MIRA_DEID_SECRET); burned-in text is blanked or the
    file quarantined; slides lose label and macro images. Every output is scanned for the
    identifiers of its input; a file whose output is flagged is held in the quarantine as
    phi-suspect (see `mira quarantine`) and the others are written. The files are worked on by
    one process per core (MIRA_DASK_WORKERS sets how many), or on the Dask scheduler given by
    --dask-address / MIRA_DASK_ADDRESS.
    """
    from tasks.deid import deidentify_folder, held_summary, policy_for

    settings = settings_of(ctx).with_overrides(deid_profile=profile)
    with step_progress(console) as progress:
        result = deidentify_folder(
            settings.store(input_url),
            settings.store(output_url),
            settings.store(quarantine),
            settings.deid_key(),
            policy_for(settings.deid_profile),
            dask_address=settings.dask_address,
            workers=settings.dask_workers,
            progress=lambda done, total: progress("de-identifying", done, total),
        )
    out.print(
        f"{result.instances} DICOM files and {result.slides} slides de-identified into {output_url} "
        f"({result.scrubbed} with burned-in text blanked); duplicates: {result.duplicates}; "
        f"{held_summary(result.quarantined, result.files)}",
        soft_wrap=True,
    )
    if result.quarantined:
        out.print(f"review them with: mira quarantine list --in {quarantine}", soft_wrap=True)


def phi_scan(
    ctx: typer.Context,
    output_url: Annotated[
        str, typer.Argument(metavar="OUTPUT", help="De-identified folder or URL.")
    ],
    against: Annotated[str, typer.Option("--against", help="The original inputs (folder or URL).")],
) -> None:
    """Search every byte and path of OUTPUT for identifiers found in the INPUT files.

    Names, IDs, dates, UIDs, addresses and institutions are collected from the inputs (and
    their file names); exits 1 naming the file and attribute of every hit.
    """
    from tasks.deid import input_identifiers, scan_outputs

    settings = settings_of(ctx)
    with step_progress(console) as progress:
        identifiers = input_identifiers(
            settings.store(against), lambda d, t: progress("reading inputs", d, t)
        )
        hits = scan_outputs(
            settings.store(output_url), identifiers, lambda d, t: progress("scanning outputs", d, t)
        )
    if not hits:
        out.print(
            f"no identifier of the inputs found in {output_url} ({len(identifiers)} searched)"
        )
        return
    table = Table(title=f"{len(hits)} PHI hits")
    table.add_column("file")
    table.add_column("where")
    for hit in hits:
        table.add_row(hit.file, hit.location)
    out.print(table)
    raise PhiLeak(f"{len(hits)} identifiers of the inputs found in {output_url}")


def register(app: typer.Typer) -> None:
    app.command("deid")(deid)
    app.command("phi-scan")(phi_scan)

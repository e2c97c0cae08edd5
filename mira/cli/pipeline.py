"""``mira run`` (the whole pipeline for one batch) and ``mira demo`` (everything, on sample data)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mira.cli.common import console, out, settings_of
from mira.errors import InvalidInput, MiraError
from mira.settings import Settings
from tasks import layout

if TYPE_CHECKING:
    from flows.summaries import PipelineSummary


def batch_name(batch: str, settings: Settings) -> str:
    """The drop-zone batch that BATCH names: a bare name, or a folder/URL inside the drop zone."""
    if "/" not in batch.strip("/"):
        return batch.strip("/")
    from storage import open_object

    dropzone_url = settings.gateway().child(layout.DROPZONE).url
    parent, name = open_object(batch)
    if parent.url.rstrip("/") != dropzone_url.rstrip("/"):
        raise InvalidInput(f"batch {batch!r} is not in the gateway drop zone {dropzone_url}")
    return name


def preflight(settings: Settings, batch: str) -> None:
    """Fail in a second, before any server starts: the secret, the batch, both stores."""
    from tasks.ingest import check_pipeline_inputs

    settings.deid_key()
    check_pipeline_inputs(settings.gateway(), settings.research(), batch)


def use_prefect_api(settings: Settings) -> None:
    """Point Prefect at the configured server; without one, flows run on an ephemeral server."""
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url


def run(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name, or its folder/URL in the drop zone.")],
) -> None:
    """Run the pipeline (every built stage) for one drop-zone batch as a Prefect flow run."""
    settings = settings_of(ctx)
    name = batch_name(batch, settings)
    preflight(settings, name)
    use_prefect_api(settings)
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    stores = StoreParams(gateway_url=settings.gateway_url, research_url=settings.research_url)
    summary = pipeline(name, stores)
    print_summaries([summary])


DEMO_HINTS = (
    "ls",
    'catalog query "SELECT modality, count(*) FROM instances GROUP BY 1"',
    "catalog tables",
    "snapshot list",
    "snapshot verify NAME",
    "qa docs",
    "review list",
)
SUMMARY_ROWS = (
    "ingested",
    "held back (share, by reason)",
    "duplicates",
    "de-identified",
    "slides converted",
    "QA gate / review",
    "split sizes (this batch's patients)",
    "snapshot",
)


def print_summaries(summaries: list[PipelineSummary]) -> None:
    """A column per batch, a row per stage; then each snapshot's full top hash."""
    table = Table(title="pipeline summary")
    table.add_column("stage")
    for summary in summaries:
        table.add_column(summary.batch, overflow="fold")
    cells = [summary_row(summary) for summary in summaries]
    for index, label in enumerate(SUMMARY_ROWS):
        table.add_row(label, *(column[index] for column in cells))
    out.print(table)
    for summary in summaries:
        if summary.snapshot is not None:
            out.print(
                f"snapshot {summary.snapshot.name}: top hash {summary.snapshot.top_hash}",
                soft_wrap=True,
            )
    notes = {
        s.snapshot.created.note
        for s in summaries
        if s.snapshot and s.snapshot.created and s.snapshot.created.enforcement != "s3-object-lock"
    }
    for note in sorted(notes):  # once per command, however many snapshots it took
        console.print(f"[yellow]warning:[/] {note}", soft_wrap=True, highlight=False)


def run_reporting_failure(pipeline: Any, batch: str, stores: Any) -> PipelineSummary:
    """Run the pipeline for one batch; a failed run becomes a row saying why, not a stop."""
    from flows.summaries import PipelineSummary

    try:
        summary: PipelineSummary = pipeline(batch, stores)
    except MiraError as err:
        console.print(f"[bold red]batch {batch} failed:[/] {err}", soft_wrap=True)
        return PipelineSummary(batch=batch, error=str(err))
    return summary


def _converted(summary: PipelineSummary) -> str:
    convert = summary.convert
    if convert is None:
        return "-"
    if not convert.converted and convert.current:
        return f"none ({convert.current} already converted)"
    return str(convert.converted)


def summary_row(summary: PipelineSummary) -> list[str]:
    """The cells of one batch's row (stages that did not run show "-")."""
    if summary.error is not None:
        return ["failed: " + summary.error, *["-"] * (len(SUMMARY_ROWS) - 1)]
    if summary.skipped is not None:
        return ["skipped: " + summary.skipped, *["-"] * (len(SUMMARY_ROWS) - 1)]
    ingest, deid, quality = summary.ingest, summary.deidentify, summary.quality
    duplicates = ", ".join(f"{stage} {n}" for stage, n in summary.duplicates.items())
    qa = f"{quality.verdict}; {quality.queued_for_review} for review" if quality else "-"
    sizes = summary.batch_split
    return [
        str(ingest.accepted) if ingest else "-",
        summary.held_line().removeprefix("held ") if ingest or deid else "-",
        duplicates if ingest or deid else "-",
        f"{deid.instances} DICOM, {deid.slides} slides" if deid else "-",
        _converted(summary),
        qa,
        ", ".join(f"{k} {v}" for k, v in sorted(sizes.items())) or "-",
        summary.snapshot.name if summary.snapshot else "-",
    ]


def demo(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="Folder for the demo's gateway and research stores.")
    ] = Path("data"),
    slide_size: Annotated[int, typer.Option(min=512, help="Sample slide side in pixels.")] = 20_000,
) -> None:
    """Generate sample data and run the whole pipeline on it, on local folders."""
    from flows.params import StoreParams
    from flows.pipeline import pipeline
    from mira.cli.progress import step_progress
    from tasks.ingest import find_ready_batches
    from tasks.sample import generate_sample_data

    settings = settings_of(ctx).with_overrides(
        gateway_url=str(data / "gateway"), research_url=str(data / "research")
    )
    use_prefect_api(settings)
    _ensure_demo_secret(data / "gateway")
    dropzone = data / "gateway" / layout.DROPZONE
    if not (dropzone / "_sample_phi.json").exists():
        with step_progress(console) as progress:
            generate_sample_data(
                dropzone, slide_size=slide_size, progress=progress, ndpi_slides=1, dicom_slides=1
            )
    gateway = settings.gateway()
    stores = StoreParams(gateway_url=settings.gateway_url, research_url=settings.research_url)
    summaries = [
        run_reporting_failure(pipeline, ref.name, stores) for ref in find_ready_batches(gateway)
    ]
    print_summaries(summaries)
    research = settings.research()
    mira = os.path.relpath(sys.argv[0]) if os.sep in sys.argv[0] else "mira"
    out.print(
        f"""
Where to look
  gateway store (PHI side)        {gateway.url}
    quarantine + reasons          {gateway.child(layout.QUARANTINE).url}
    ingest records                {gateway.child(layout.INGEST).url}
  research store (de-identified)  {research.url}
    DICOM by pseudonym            {research.child(layout.DICOM).url}
    slides / OME-Zarr pyramids    {research.child(layout.SLIDES).url}  {research.child(layout.PYRAMIDS).url}
    catalog (Parquet)             {research.child(layout.CATALOG).url}
    quality results, Data Docs    {research.child(layout.QUALITY).url}
    snapshots                     {research.child(layout.SNAPSHOTS).url}
Try:""",
        soft_wrap=True,
    )
    for hint in DEMO_HINTS:
        out.print(f"  {mira} --research {research.url} {hint}", soft_wrap=True, highlight=False)
    held = f"  {mira} --gateway {gateway.url} quarantine list"  # files held back, PHI side
    out.print(held, soft_wrap=True, highlight=False)


def _ensure_demo_secret(gateway: Path) -> None:
    """Use MIRA_DEID_SECRET when set; else a throwaway demo key kept on the gateway side."""
    if os.environ.get("MIRA_DEID_SECRET") or os.environ.get("MIRA_DEID_SECRET_FILE"):
        return
    key_file = gateway / "demo-deid-secret.key"
    if not key_file.exists():
        gateway.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32) + "\n")
        key_file.chmod(0o600)
    os.environ["MIRA_DEID_SECRET_FILE"] = str(key_file.absolute())
    console.print(
        f"[yellow]demo:[/] using a throwaway de-identification secret generated for this demo "
        f"({key_file}); set MIRA_DEID_SECRET to your own for real data.",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)

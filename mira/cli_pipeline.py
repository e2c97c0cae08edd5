"""``mira run`` (the whole pipeline for one batch) and ``mira demo`` (everything, on sample data)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mira.cli_common import console, out, settings_of
from mira.errors import InvalidInput
from mira.settings import Settings

DROPZONE = "dropzone"


def batch_name(batch: str, settings: Settings) -> str:
    """The drop-zone batch that BATCH names: a bare name, or a folder/URL inside the drop zone."""
    if "/" not in batch.strip("/"):
        return batch.strip("/")
    from storage import open_store

    dropzone_url = open_store(settings.gateway_url).child(DROPZONE).url
    location = batch if "://" in batch else str(Path(batch).absolute())
    location = location.removeprefix("file://").rstrip("/")
    parent, _, name = location.rpartition("/")
    if parent.rstrip("/") != dropzone_url.rstrip("/"):
        raise InvalidInput(f"batch {batch!r} is not in the gateway drop zone {dropzone_url}")
    return name


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
    use_prefect_api(settings)
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    stores = StoreParams(gateway_url=settings.gateway_url, research_url=settings.research_url)
    summary = pipeline(name, stores)
    print_summaries([summary])


def print_summaries(summaries: list[dict[str, Any]]) -> None:
    """One row per batch: what each stage did."""
    table = Table(title="pipeline summary")
    table.add_column("batch")
    table.add_column("ingested", justify="right")
    table.add_column("quarantined (by reason)")
    table.add_column("duplicates", justify="right")
    for summary in summaries:
        ingest = summary.get("ingest", {})
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(ingest.get("quarantined", {}).items()))
        table.add_row(
            summary["batch"],
            str(ingest.get("accepted", 0)),
            reasons or "-",
            str(ingest.get("duplicates", 0)),
        )
    out.print(table)
    pending = summaries[0].get("stages_not_built") if summaries else None
    if pending:
        out.print(f"stages not built yet: {', '.join(pending)}")


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
    from mira.progress import step_progress
    from storage import open_store
    from tasks.ingest import find_ready_batches
    from tasks.sample_data import generate_sample_data

    settings = settings_of(ctx).with_overrides(
        gateway_url=str(data / "gateway"), research_url=str(data / "research")
    )
    use_prefect_api(settings)
    _ensure_demo_secret(data / "gateway")
    dropzone = data / "gateway" / DROPZONE
    if not (dropzone / "_sample_phi.json").exists():
        with step_progress(console) as progress:
            generate_sample_data(dropzone, slide_size=slide_size, progress=progress)
    gateway = open_store(settings.gateway_url)
    stores = StoreParams(gateway_url=settings.gateway_url, research_url=settings.research_url)
    summaries = [pipeline(ref.name, stores) for ref in find_ready_batches(gateway)]
    print_summaries(summaries)
    out.print(f"gateway store (PHI side): {gateway.url}")
    out.print(f"  quarantine:     {gateway.child('quarantine').url}")
    out.print(f"  ingest records: {gateway.child('ingest').url}")
    out.print(f"research store (de-identified): {open_store(settings.research_url).url}")


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
        f"({key_file}); set MIRA_DEID_SECRET to your own for real data."
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)

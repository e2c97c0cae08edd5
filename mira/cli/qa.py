"""``mira qa ...``: the quality gate of each batch, its expectation results and Data Docs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.table import Table

from mira.cli.catalog import Format, emit
from mira.cli.common import console, out, research_store, settings_of
from mira.errors import InvalidInput
from tasks import layout

qa_app = typer.Typer(
    help="The quality gate: expectation results, image QA and Data Docs.",
    invoke_without_command=True,
)


QA_SUMMARY_SQL = """
SELECT batch,
    CASE WHEN bool_or(key = '' AND severity = 'fail' AND NOT passed) THEN 'fail' ELSE 'pass' END
        AS gate,
    count(*) FILTER (WHERE key = '' AND NOT passed) AS expectations_not_passed,
    count(DISTINCT key) FILTER (WHERE key <> '' AND NOT passed) AS items_flagged
FROM quality GROUP BY batch ORDER BY batch
"""


@qa_app.callback()
def qa(ctx: typer.Context) -> None:
    """The quality gate of each batch; without a sub-command, the verdict of every batch."""
    if ctx.invoked_subcommand is not None:
        return
    from tasks.dataset import (
        list_parts,
        query_catalog,
    )

    store = research_store(ctx)
    validated = bool(list_parts(store, "quality"))
    result = query_catalog(store, QA_SUMMARY_SQL) if validated else pa.table({})
    if not result.num_rows:
        out.print("no batch has been validated yet: run `mira qa run BATCH`")
        return
    emit(result, Format.table, "quality gate")


@qa_app.command("run")
def qa_run(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Argument(help="Batch; empty: every catalog batch.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Quality config override (YAML/JSON) [env: MIRA_QUALITY_CONFIG]"),
    ] = None,
    phi_identifiers: Annotated[
        Path | None,
        typer.Option(help="File of identifiers known for the batch, one per line."),
    ] = None,
    docs: Annotated[bool, typer.Option(help="Rebuild the Data Docs afterwards.")] = True,
) -> None:
    """Run the quality flow: GX suites on the catalog, image QA on Dask, the review queue."""
    from flows.params import StoreParams
    from flows.quality import QualityOptions, quality
    from mira.cli.pipeline import use_prefect_api

    settings = settings_of(ctx)
    use_prefect_api(settings)
    options = QualityOptions(
        config_path=str(config) if config else None,
        phi_identifiers_file=str(phi_identifiers) if phi_identifiers else None,
        build_docs=docs,
    )
    stores = StoreParams(research_url=settings.research_url, dask_address=settings.dask_address)
    summary = quality(batch, stores, options)
    view = Table(title="quality gate")
    for column in ("batch", "gate", "failed checks", "warnings", "items", "queued"):
        view.add_column(column)
    for row in summary.batches:
        view.add_row(
            row.batch,
            row.verdict,
            ", ".join(row.failed_checks) or "-",
            str(len(row.warned_checks)),
            str(row.items_checked),
            str(len(row.queued_for_review)),
        )
    out.print(view)
    if summary.data_docs:
        out.print(f"Data Docs: {summary.data_docs}")


@qa_app.command("show")
def qa_show(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="The batch.")],
    everything: Annotated[bool, typer.Option("--all", help="Passed expectations too.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="The stored JSON.")] = False,
) -> None:
    """The stored results of one batch: verdict, expectations, image QA counts."""
    from tasks.quality import read_validation

    document = read_validation(research_store(ctx), batch)
    if json_output:
        typer.echo(json.dumps(document, indent=1))
        return
    out.print(
        f"batch {batch}: gate [bold]{document.get('verdict')}[/] "
        f"(validated {document.get('validated_at')})"
    )
    view = Table(title="expectations" + ("" if everything else " that did not pass"))
    for column in ("frame", "check", "severity", "passed", "detail"):
        view.add_column(column, overflow="fold")
    for row in document.get("expectations", []):
        if everything or not row["passed"]:
            view.add_row(
                row["frame"], row["check"], row["severity"], str(row["passed"]), row["detail"]
            )
    out.print(view)
    image = document.get("image_qa", {})
    out.print(
        f"image QA: {image.get('checked', 0)} items, {image.get('flagged', 0)} flagged, "
        f"{len(image.get('queued_for_review', []))} queued for review; "
        f"failed checks: {image.get('failed_by_check') or 'none'}"
    )


@qa_app.command("docs")
def qa_docs(
    ctx: typer.Context,
    build: Annotated[
        bool, typer.Option(help="Rebuild them from the stored results first.")
    ] = False,
    download: Annotated[
        Path | None, typer.Option(help="Copy the site into this folder (to open from S3).")
    ] = None,
) -> None:
    """Where the GX Data Docs are (they open offline: no CDN assets)."""
    from tasks.quality import publish_data_docs

    settings = settings_of(ctx)
    store = research_store(ctx)
    if build:
        publish_data_docs(settings.research())
    index = f"{layout.DATA_DOCS}/index.html"
    if not store.exists(index):
        raise InvalidInput("no Data Docs yet: run `mira qa run` or `mira qa docs --build`")
    if download is not None:
        for obj in store.list(f"{layout.DATA_DOCS}/"):
            target = download / obj.key.removeprefix(f"{layout.DATA_DOCS}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_bytes(obj.key))
        out.print(f"Data Docs: {(download / 'index.html').absolute()}")
        return
    where = store.filesystem_path(index) if store.is_local else store.url_of(index)
    out.print(f"Data Docs: {where}")
    if not store.is_local:
        console.print("the store is remote: add --download DIR to open the pages in a browser")


def register(app: typer.Typer) -> None:
    app.add_typer(qa_app, name="qa")

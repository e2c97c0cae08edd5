"""``mira ls``, ``mira catalog query``, ``mira qa ...`` and ``mira review ...``.

Every listing answers from the catalog (Parquet parts queried with DuckDB), never by listing
the data objects of the store.
"""

from __future__ import annotations

import io
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.table import Table

from mira.cli.common import console, out, settings_of
from mira.errors import InvalidInput
from storage import Store
from tasks import layout

TABLE_ROWS = 200

catalog_app = typer.Typer(help="Ask the metadata catalog (Parquet + DuckDB).", no_args_is_help=True)
qa_app = typer.Typer(
    help="The quality gate: expectation results, image QA and Data Docs.",
    invoke_without_command=True,
)
review_app = typer.Typer(
    help="The human review queue of flagged images and slides.", no_args_is_help=True
)


class Level(StrEnum):
    """What ``mira ls`` lists."""

    datasets = "datasets"
    patients = "patients"
    studies = "studies"
    series = "series"
    instances = "instances"
    slides = "slides"


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


LEVEL_SQL = {
    Level.datasets: """
WITH i AS (
    SELECT batch, count(DISTINCT patient_id) AS patients, count(DISTINCT study_uid) AS studies,
        count(DISTINCT series_uid) AS series, count(*) AS instances, sum(bytes) AS bytes
    FROM instances WHERE {instances} GROUP BY batch
), s AS (
    SELECT batch, count(*) AS slides, sum(bytes) AS bytes FROM slides WHERE {slides} GROUP BY batch
)
SELECT coalesce(i.batch, s.batch) AS batch, coalesce(i.patients, 0) AS patients,
    coalesce(i.studies, 0) AS studies, coalesce(i.series, 0) AS series,
    coalesce(i.instances, 0) AS instances, coalesce(s.slides, 0) AS slides,
    coalesce(i.bytes, 0) + coalesce(s.bytes, 0) AS bytes
FROM i FULL JOIN s ON i.batch = s.batch ORDER BY batch""",
    Level.patients: """
SELECT patient_id, string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities,
    count(DISTINCT study_uid) AS studies, count(DISTINCT series_uid) AS series,
    count(*) AS instances
FROM instances WHERE {instances} GROUP BY patient_id ORDER BY patient_id""",
    Level.studies: """
SELECT patient_id, study_uid, min(study_date) AS study_date,
    string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities,
    count(DISTINCT series_uid) AS series, count(*) AS instances
FROM instances WHERE {instances} GROUP BY patient_id, study_uid ORDER BY patient_id, study_uid""",
    Level.series: """
SELECT patient_id, study_uid, series_uid, any_value(modality) AS modality,
    any_value(body_part) AS body_part, count(*) AS instances, max(rows) AS rows,
    max(columns) AS columns
FROM instances WHERE {instances} GROUP BY patient_id, study_uid, series_uid
ORDER BY patient_id, study_uid, series_uid""",
    Level.instances: """
SELECT key, batch, patient_id, modality, rows, columns, frames, bytes
FROM instances WHERE {instances} ORDER BY key""",
    Level.slides: """
SELECT key, batch, slide_id, patient_id, width, height, levels, mpp, vendor
FROM slides WHERE {slides} ORDER BY key""",
}
FILTER_COLUMNS = {
    "instances": ("modality", "patient_id", "study_uid", "batch"),
    "slides": ("patient_id", "batch"),
}
SLIDE_MODALITY = "SM"
QA_SUMMARY_SQL = """
SELECT batch,
    CASE WHEN bool_or(key = '' AND severity = 'fail' AND NOT passed) THEN 'fail' ELSE 'pass' END
        AS gate,
    count(*) FILTER (WHERE key = '' AND NOT passed) AS expectations_not_passed,
    count(DISTINCT key) FILTER (WHERE key <> '' AND NOT passed) AS items_flagged
FROM quality GROUP BY batch ORDER BY batch
"""


def research_store(ctx: typer.Context) -> Store:
    settings = settings_of(ctx)
    return settings.research()


def where_clauses(filters: dict[str, str]) -> dict[str, str]:
    """Per table, the WHERE clause of the filters it has columns for (``$name`` parameters)."""
    clauses = {}
    for table, columns in FILTER_COLUMNS.items():
        terms = [f"{column} = ${column}" for column in columns if column in filters]
        if table == "slides" and filters.get("modality", SLIDE_MODALITY) != SLIDE_MODALITY:
            terms.append("false")  # slides are SM; another modality filter leaves none
        clauses[table] = " AND ".join(terms) or "true"
    return clauses


def catalog_listing(store: Store, level: Level, filters: dict[str, str]) -> pa.Table:
    """Rows of one level, from the catalog's parts (tables not written yet count as empty)."""
    import duckdb

    from tasks.dataset import (
        INSTANCE_SCHEMA,
        SLIDE_SCHEMA,
        connect_catalog,
    )

    schemas = {"instances": INSTANCE_SCHEMA, "slides": SLIDE_SCHEMA}
    sql = LEVEL_SQL[level].format(**where_clauses(filters))
    used = [table for table in schemas if re.search(rf"\b{table}\b", sql)]
    connection = connect_catalog(store, used)
    try:
        registered = {row[0] for row in connection.sql("SHOW TABLES").fetchall()}
        for table in set(used) - registered:
            connection.register(table, schemas[table].empty_table())
        params = {name: value for name, value in filters.items() if f"${name}" in sql}
        return connection.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as err:
        raise InvalidInput(f"catalog listing failed: {err}") from err
    finally:
        connection.close()


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def emit(data: pa.Table, fmt: Format, title: str, limit: int | None = None) -> None:
    """Print rows as a rich table (capped), JSON records or CSV."""
    if limit is not None:
        data = data.slice(0, limit)
    if fmt == Format.json:
        typer.echo(json.dumps(data.to_pylist(), default=str, indent=1))
        return
    if fmt == Format.csv:
        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        if data.num_columns:
            pacsv.write_csv(data, buffer)
        typer.echo(buffer.getvalue().decode(), nl=False)
        return
    if not data.num_columns:
        out.print(f"{title}: nothing in the catalog yet (0 rows)")
        return
    shown = data.slice(0, TABLE_ROWS)
    view = Table(title=f"{title} ({data.num_rows} rows)")
    for name in data.column_names:
        view.add_column(name, overflow="fold")
    for row in shown.to_pylist():
        view.add_row(*(cell(v) for v in row.values()))
    out.print(view)
    if data.num_rows > shown.num_rows:
        out.print(f"{data.num_rows - shown.num_rows} more rows: use --json or --csv for all")


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON records.")]
CsvOption = Annotated[bool, typer.Option("--csv", help="Print CSV.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="At most this many rows.")]


def output_format(json_output: bool, csv_output: bool) -> Format:
    if json_output and csv_output:
        raise typer.BadParameter("choose one of --json and --csv")
    return Format.json if json_output else Format.csv if csv_output else Format.table


def ls(
    ctx: typer.Context,
    level: Annotated[Level, typer.Argument(help="What to list.")] = Level.patients,
    modality: Annotated[str | None, typer.Option(help="Only this modality (CT, MR...).")] = None,
    patient: Annotated[str | None, typer.Option(help="Only this (pseudonymous) patient.")] = None,
    study: Annotated[str | None, typer.Option(help="Only this study UID.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch.")] = None,
    limit: LimitOption = None,
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
) -> None:
    """List datasets (batches), patients, studies, series, instances or slides from the catalog.

    Answers from the catalog's Parquet parts, never by listing the store's objects.
    """
    filters = {"modality": modality, "patient_id": patient, "study_uid": study, "batch": batch}
    given = {column: value for column, value in filters.items() if value is not None}
    fmt = output_format(json_output, csv_output)
    emit(catalog_listing(research_store(ctx), level, given), fmt, level.value, limit)


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the catalog tables.")],
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
    limit: LimitOption = None,
) -> None:
    """Run SQL over the catalog tables (instances, series, studies, slides, quality, review...).

    Example: mira catalog query "SELECT modality, count(*) FROM instances GROUP BY 1"
    """
    from tasks.dataset import (
        query_catalog,
    )

    fmt = output_format(json_output, csv_output)
    emit(query_catalog(research_store(ctx), sql), fmt, "query", limit)


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


def _review_table(items: list[Any], title: str) -> None:
    view = Table(title=f"{title} ({len(items)})")
    for column in ("key", "batch", "kind", "status", "reasons", "decided by", "updated"):
        view.add_column(column, overflow="fold")
    for item in items:
        view.add_row(
            item.key,
            item.batch,
            item.kind,
            item.status,
            item.reasons,
            item.decided_by,
            item.updated_at,
        )
    out.print(view)


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    everything: Annotated[
        bool, typer.Option("--all", help="Every status, not only pending.")
    ] = False,
    batch: Annotated[str | None, typer.Option(help="Only this batch.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON records.")] = False,
) -> None:
    """Items waiting for a decision (pending), or every item with --all."""
    from tasks.quality import list_items

    items = list_items(research_store(ctx), None if everything else "pending", batch)
    if json_output:
        typer.echo(json.dumps([item.row() for item in items], indent=1))
        return
    _review_table(items, "review queue" if not everything else "review items")


@review_app.command("show")
def review_show(
    ctx: typer.Context, key: Annotated[str, typer.Argument(help="Catalog key of the item.")]
) -> None:
    """One item: its state, reasons, thumbnail and the whole decision history."""
    from tasks.quality import history

    store = research_store(ctx)
    rows = history(store, key)
    current = rows[-1]
    out.print(f"[bold]{current.key}[/] ({current.kind}, batch {current.batch}): {current.status}")
    out.print(f"reasons: {current.reasons}")
    if current.thumbnail_key:
        thumbnail = current.thumbnail_key
        where = store.filesystem_path(thumbnail) if store.is_local else store.url_of(thumbnail)
        out.print(f"thumbnail: {where}")
    _review_table(rows, "history")


def _decide(ctx: typer.Context, key: str, status: str, by: str, note: str) -> None:
    from tasks.quality import decide

    item = decide(research_store(ctx), key, status, by, note)
    out.print(f"{item.key}: {item.status} by {item.decided_by} at {item.updated_at}")


ByOption = Annotated[str, typer.Option("--by", help="Who decides (recorded with the decision).")]
NoteOption = Annotated[str, typer.Option(help="Why, for the record.")]
KeyArgument = Annotated[str, typer.Argument(help="Catalog key of the item.")]


@review_app.command("accept")
def review_accept(
    ctx: typer.Context, key: KeyArgument, by: ByOption, note: NoteOption = ""
) -> None:
    """Accept an item: it may enter splits and snapshots again."""
    _decide(ctx, key, "accepted", by, note)


@review_app.command("reject")
def review_reject(
    ctx: typer.Context, key: KeyArgument, by: ByOption, note: NoteOption = ""
) -> None:
    """Reject an item: it stays out of splits and snapshots."""
    _decide(ctx, key, "rejected", by, note)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    catalog_app.command("query")(query)
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(qa_app, name="qa")
    app.add_typer(review_app, name="review")

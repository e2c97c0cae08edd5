"""``mira ls``, ``mira catalog query`` and ``mira catalog tables``: answers from the catalog.

Every listing reads the catalog (Parquet parts queried with DuckDB), never the data objects of
the store.
"""

from __future__ import annotations

import io
import json
import re
from enum import StrEnum
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.table import Table

from mira.cli.common import out, research_store
from mira.errors import InvalidInput
from storage import Store

TABLE_ROWS = 200


catalog_app = typer.Typer(help="Ask the metadata catalog (Parquet + DuckDB).", no_args_is_help=True)


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
    if not data.num_rows:
        out.print(f"{title}: none (0 rows)")
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
    """Run a read-only SQL query over the catalog tables: instances, series, studies, slides,
    pyramids, quality, review, splits, batches (`mira catalog tables` shows their sizes).

    Only queries run (SELECT, SHOW TABLES, DESCRIBE, SUMMARIZE, EXPLAIN); the query can read
    no file. Example: `mira catalog query "SELECT modality, count(*) FROM instances GROUP BY 1"`
    """
    from tasks.dataset import (
        query_catalog,
    )

    fmt = output_format(json_output, csv_output)
    emit(query_catalog(research_store(ctx), sql), fmt, "query", limit)


def tables(
    ctx: typer.Context, json_output: JsonOption = False, csv_output: CsvOption = False
) -> None:
    """The catalog's tables, with their parts (one per batch, split or slide) and rows."""
    from tasks.dataset import catalog_tables

    found = catalog_tables(research_store(ctx))
    listing = pa.Table.from_pylist(
        [{"table": t.name, "parts": t.parts, "rows": t.rows} for t in found]
    )
    emit(listing, output_format(json_output, csv_output), "catalog tables")


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    catalog_app.command("query")(query)
    catalog_app.command("tables")(tables)
    app.add_typer(catalog_app, name="catalog")

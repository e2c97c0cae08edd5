"""``mira audit``: prove the audit log untouched, and ask it questions in SQL."""

from __future__ import annotations

from typing import Annotated

import typer

from mira.cli.common import out, settings_of
from mira.errors import IntegrityError

audit_app = typer.Typer(
    help="The audit log: one record per command or flow run that touched a store.",
    no_args_is_help=True,
)


def verify(
    ctx: typer.Context,
    expect: Annotated[
        str | None,
        typer.Option(
            help="A head SHA-256 printed by an earlier verify: it must still be in the chain.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check that the audit log is complete and untouched: no object missing, changed,
    reordered or rewritten, each chained to the one before (and locked, on an Object Lock
    store). Prints the head's SHA-256: keep it elsewhere and pass it as --expect next time.
    Exits 1 on any problem, naming the object."""
    from mira.audit import verify_log

    store = settings_of(ctx).research()
    check = verify_log(store, expect)
    for problem in check.problems:
        out.print(f"[red]problem[/] {problem}", highlight=False, soft_wrap=True)
    summary = f"{check.objects} objects, {check.records} records"
    if not check.intact:
        raise IntegrityError(
            f"audit log at {store.url_of('audit')} is not intact: {len(check.problems)} "
            f"problem(s) in {summary}"
        )
    out.print(f"audit log intact: {summary}; head sha256 {check.head_sha256}", soft_wrap=True)


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the table audit.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many rows.")] = None,
) -> None:
    """Run a read-only SQL query over the audit records, the table `audit` (one row per
    record: operation, who, host, started, outcome, objects_read, objects_written, ...; stores
    is a list of per-store entries to UNNEST). Example:
    `mira audit query "SELECT who, operation, count(*) FROM audit GROUP BY ALL"`"""
    from mira.audit import query_log
    from mira.cli.catalog import emit, output_format

    fmt = output_format(json_output, csv_output)
    emit(query_log(settings_of(ctx).research(), sql), fmt, "audit", limit)


def register(app: typer.Typer) -> None:
    audit_app.command("verify")(verify)
    audit_app.command("query")(query)
    app.add_typer(audit_app, name="audit")

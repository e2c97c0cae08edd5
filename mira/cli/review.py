"""``mira review ...``: the human review queue of flagged images and slides."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from mira.cli.common import out, research_store

review_app = typer.Typer(
    help="The human review queue of flagged images and slides in the research store. Files "
    "held back before publication (phi-suspect outputs, ingest and de-identification "
    "quarantine) are reviewed with `mira quarantine` on the gateway side.",
    no_args_is_help=True,
)


def _review_table(items: list[Any], title: str) -> None:
    if not items:
        out.print(f"{title}: none")
        return
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
    app.add_typer(review_app, name="review")

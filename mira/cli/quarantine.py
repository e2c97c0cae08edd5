"""``mira quarantine ...``: the files held back (by ingest or de-identification), as a queue a
person works through: list, show, release or drop, every decision recorded.

Held files live on the gateway (PHI side), so these commands read the gateway store, where
``mira review`` reads the research store's quality queue.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mira.cli.common import out, settings_of

if TYPE_CHECKING:
    from tasks.deid import HeldItem, QuarantineQueue

quarantine_app = typer.Typer(
    help="Files held back by ingest or de-identification: list, show, release or drop them "
    "(gateway side; every decision is recorded).",
    no_args_is_help=True,
)

InOption = Annotated[
    str | None,
    typer.Option(
        "--in",
        help="A `mira deid --quarantine` folder or URL instead of the gateway's quarantine.",
        show_default=False,
    ),
]
ItemArgument = Annotated[
    str,
    typer.Argument(
        metavar="ITEM", help="The item as list shows it: BATCH/PATH (a PATH with --in)."
    ),
]
ByOption = Annotated[str, typer.Option("--by", help="Who decides (recorded with the decision).")]
NoteOption = Annotated[str, typer.Option(help="Why, for the record.")]


def _queue(ctx: typer.Context, where: str | None) -> QuarantineQueue:
    from tasks.deid import QuarantineQueue

    settings = settings_of(ctx)
    if where:
        return QuarantineQueue(settings.store(where), prefix="")
    return QuarantineQueue(settings.gateway())


@quarantine_app.command("list")
def quarantine_list(
    ctx: typer.Context,
    everything: Annotated[
        bool, typer.Option("--all", help="Decided items too, not only pending ones.")
    ] = False,
    batch: Annotated[str | None, typer.Option(help="Only this batch.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    where: InOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON records.")] = False,
) -> None:
    """Held files waiting for a decision (or every held file with --all), with counts per reason."""
    from tasks.deid import reason_counts

    items = [
        item
        for item in _queue(ctx, where).items(batch if not where else None)
        if (everything or item.status == "pending")
        and batch in (None, item.batch)
        and reason in (None, item.reason)
    ]
    if json_output:
        typer.echo(json.dumps([_item_json(item) for item in items], indent=1))
        return
    if not items:
        out.print("quarantine: nothing " + ("held" if everything else "pending"))
        return
    view = Table(title=f"quarantine ({len(items)})")
    for column in ("item", "reason", "stage", "status", "release"):
        view.add_column(column, overflow="fold")
    for item in items:
        view.add_row(
            item.id, item.reason, str(item.record.get("stage", "")), item.status, _rule(item)
        )
    out.print(view)
    counts = ", ".join(f"{k} {v}" for k, v in reason_counts(items).items())
    out.print(f"by reason: {counts}", soft_wrap=True)


def _rule(item: HeldItem) -> str:
    """What release would do, in a word or two."""
    if item.holds_output:
        return "publish as staged"
    return "refused" if item.release_rule.startswith("refused") else "re-stage"


def _item_json(item: HeldItem) -> dict[str, Any]:
    return {"item": item.id, "status": item.status, **item.record, "decisions": item.decisions}


@quarantine_app.command("show")
def quarantine_show(ctx: typer.Context, item_id: ItemArgument, where: InOption = None) -> None:
    """One held file: why it is held, what release would do, its decisions; for a phi-suspect
    file, each flagged attribute and its value in the held de-identified output."""
    from tasks.deid import flagged_values

    queue = _queue(ctx, where)
    item = queue.item(item_id)
    record = item.record
    out.print(f"[bold]{item.id}[/]: {item.reason} ({record.get('stage', '')}), {item.status}")
    out.print(f"detail: {record.get('detail', '')}", soft_wrap=True, highlight=False)
    for label in ("batch", "sha256", "size", "detected_format", "time"):
        out.print(f"{label}: {record.get(label)}", highlight=False)
    out.print(f"release: {item.release_rule}", soft_wrap=True)
    staged = str(record.get("staged_key") or "")
    if staged and queue.store.exists(staged):
        out.print(
            f"held output: {queue.store.url_of(staged)} -> {record.get('research_key')}",
            soft_wrap=True,
        )
        data = queue.store.read_bytes(staged)
        places = flagged_values(data, record.get("attributes", []), record["research_key"])
        view = Table(title="flagged in the held output (PHI side)")
        view.add_column("attribute")
        view.add_column("value in the output", overflow="fold")
        for place, value in places:
            view.add_row(place, value)
        out.print(view)
    for decision in item.decisions:
        note = f" (note: {decision['note']})" if decision.get("note") else ""
        result = f" -> {decision['result']}" if decision.get("result") else ""
        out.print(
            f"{decision['time']} {decision['action']} by {decision['by']}{result}{note}",
            soft_wrap=True,
            highlight=False,
        )


@quarantine_app.command("release")
def quarantine_release(
    ctx: typer.Context,
    item_id: ItemArgument,
    by: ByOption,
    note: NoteOption = "",
    where: InOption = None,
) -> None:
    """Release a held file as its reason allows: a phi-suspect output is published as staged
    (with its catalog rows); a file held at ingest or refused by the engine is copied into a
    new drop-zone batch to go through the pipeline again. Refused where no release is safe."""
    settings = settings_of(ctx)
    decision = _queue(ctx, where).release(
        item_id, by, note, research=settings.research(), open_store=settings.store
    )
    out.print(
        f"{decision['item']}: released by {decision['by']} -> {decision['result']}",
        soft_wrap=True,
        highlight=False,
    )


@quarantine_app.command("drop")
def quarantine_drop(
    ctx: typer.Context,
    item_id: ItemArgument,
    by: ByOption,
    note: NoteOption = "",
    where: InOption = None,
) -> None:
    """Drop a held file: it is never published (its held output is deleted; the quarantined
    copy and the records stay)."""
    decision = _queue(ctx, where).drop(item_id, by, note)
    out.print(f"{decision['item']}: dropped by {decision['by']}", highlight=False)


quarantine_app.command("reject", hidden=True, help="The same as drop.")(quarantine_drop)


def register(app: typer.Typer) -> None:
    app.add_typer(quarantine_app, name="quarantine")

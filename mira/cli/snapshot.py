"""``mira split`` and ``mira snapshot create|verify|list|diff|export|prove``."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from mira.cli.common import console, out, research_store, settings_of
from mira.cli.progress import step_progress
from mira.errors import IntegrityError, InvalidInput

DIFF_ROWS = 20
PROBLEM_ROWS = 200

snapshot_app = typer.Typer(
    help="Immutable, verifiable dataset snapshots (manifest + top hash + dataset card).",
    no_args_is_help=True,
)


class LockModeChoice(StrEnum):
    """S3 Object Lock modes: COMPLIANCE binds everyone, GOVERNANCE can be lifted by a privileged user."""

    COMPLIANCE = "COMPLIANCE"
    GOVERNANCE = "GOVERNANCE"


def split(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option(help="Name of this split (one seed and ratios for life).")
    ] = ("default"),
    by: Annotated[
        list[str] | None,
        typer.Option(help="Catalog column to stratify by; repeat for several (default: modality)."),
    ] = None,
    no_strata: Annotated[bool, typer.Option("--no-strata", help="Do not stratify at all.")] = False,
    ratios: Annotated[str, typer.Option(help="train,validation,test fractions.")] = "0.7,0.15,0.15",
    seed: Annotated[
        int, typer.Option(help="Key of the patient hash: the same seed, the same split.")
    ] = 0,
    balance: Annotated[
        bool, typer.Option(help="Balance new patients within each stratum (else hash split only).")
    ] = True,
) -> None:
    """Assign patients to train/validation/test; no patient is ever in two splits.

    Existing patients never move; new ones are placed by a keyed hash of
    (seed, patient), balanced per stratum. The assignment is the catalog table
    "splits"; the balance report is printed and stored in
    `splits/<name>/balance.json`.
    """
    from tasks.dataset import SplitRatios, split_dataset

    columns = [] if no_strata else (by or ["modality"])
    result = split_dataset(
        research_store(ctx),
        name=name,
        stratify_by=columns,
        ratios=SplitRatios.parse(ratios),
        seed=seed,
        balance=balance,
    )
    table = Table(title=f"split {result.name!r}: seed {result.seed}, ratios {result.ratios}")
    for column in ("split", "stratum (" + (",".join(columns) or "none") + ")"):
        table.add_column(column)
    table.add_column("patients", justify="right")
    table.add_column("items", justify="right")
    for row in result.balance:
        table.add_row(row.split, row.stratum, str(row.patients), str(row.items))
    out.print(table)
    out.print(
        f"{result.patients} patients ({result.new_patients} new), {result.items} items; "
        f"table {result.table_key}, report {result.balance_key}"
    )
    out.print(result.unlinked_note())


@snapshot_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name; a name is used once, for ever.")],
    split_name: Annotated[str, typer.Option("--split", help="Which split to record.")] = "default",
    lock_mode: Annotated[LockModeChoice, typer.Option(help="S3 Object Lock mode.")] = (
        LockModeChoice.COMPLIANCE
    ),
    retention_days: Annotated[int, typer.Option(min=1, help="Days the lock lasts.")] = 365,
    workers: Annotated[int, typer.Option(min=1, help="Objects hashed in parallel.")] = 8,
) -> None:
    """Freeze the dataset: manifest, top hash and dataset card.

    The manifest lists every object with its version, SHA-256 and split. On S3
    with Object Lock the manifest, the card and every object version it names
    are locked; on a local folder files are only made read-only, which is
    weaker than WORM.
    """
    from tasks.dataset import LockPolicy, create_snapshot

    with step_progress(console) as progress:
        result = create_snapshot(
            research_store(ctx),
            name,
            split_name=split_name,
            lock=LockPolicy(mode=lock_mode.value, days=retention_days),
            workers=workers,
            progress=progress,
        )
    table = Table(title=f"snapshot {result.name!r}", show_header=False)
    for label, value in (
        ("objects", str(result.entries)),
        ("bytes", f"{result.bytes:,}"),
        ("top hash", result.top_hash),
        ("manifest", result.manifest_url),
        ("card", result.card_url),
        ("index", result.index_url),
        ("protection", result.enforcement),
        ("locked objects", str(result.locked_objects)),
    ):
        table.add_row(label, value)
    out.print(table)
    style = "green" if result.enforcement == "s3-object-lock" else "bold yellow"
    out.print(f"[{style}]{result.note}[/]")


@snapshot_app.command("verify")
def verify(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot to verify.")],
    top_hash: Annotated[
        str | None,
        typer.Option(help="The top hash you kept elsewhere; the card must carry exactly this."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Objects hashed in parallel.")] = 8,
) -> None:
    """Re-hash every object and check the manifest against the top hash.

    Objects are read at their recorded versions, and the card and manifest
    at the snapshot's own first (locked) versions. Lists each object that
    changed, is missing, or appeared in a folder the snapshot covers, and
    each version or delete marker put over the snapshot's card, manifest or
    index entry (tampering); exits 1 on any of them.
    """
    from tasks.dataset import verify_snapshot

    with step_progress(console) as progress:
        report = verify_snapshot(
            research_store(ctx),
            name,
            workers=workers,
            progress=progress,
            expected_top_hash=top_hash,
        )
    for problem in report.manifest_problems:
        out.print(f"[bold red]manifest:[/] {problem}")
    for overwrite in report.overwrites:
        out.print(f"[bold red]tampering:[/] {overwrite.describe()}")
    if report.limits:
        out.print(f"[bold yellow]not checked:[/] {report.limits}")
    if report.problems:
        table = Table(title=f"snapshot {name!r}: differences")
        table.add_column("object", overflow="fold", ratio=3)
        table.add_column("problem")
        table.add_column("version", overflow="fold")
        table.add_column("expected SHA-256", overflow="ellipsis", max_width=16)
        table.add_column("found SHA-256", overflow="ellipsis", max_width=16)
        for p in report.problems[:PROBLEM_ROWS]:
            table.add_row(
                p.key,
                p.problem,
                p.version_id or "-",
                p.expected_sha256 or "-",
                p.actual_sha256 or "-",
            )
        out.print(table)
        if len(report.problems) > PROBLEM_ROWS:
            out.print(f"... and {len(report.problems) - PROBLEM_ROWS} more")
    if not report.ok:
        raise IntegrityError(report.summary())
    out.print(f"[green]{report.summary()}[/]; top hash {report.top_hash}")


@snapshot_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """Every snapshot in the research store, with its size, top hash and protection."""
    from tasks.dataset import list_snapshots

    table = Table(title="snapshots")
    for column in ("name", "created", "objects", "bytes", "protection", "top hash"):
        table.add_column(column, justify="right" if column in ("objects", "bytes") else "left")
    for s in list_snapshots(research_store(ctx)):
        if not s.complete:
            table.add_row(s.name, "[yellow]incomplete (no card)[/]", "-", "-", "-", "-")
            continue
        protection = s.enforcement + (" [bold red](tampered: run verify)[/]" if s.tampered else "")
        table.add_row(s.name, s.created_at, str(s.entries), f"{s.bytes:,}", protection, s.top_hash)
    out.print(table)


@snapshot_app.command("diff")
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="The older snapshot.")],
    b: Annotated[str, typer.Argument(help="The newer snapshot.")],
    limit: Annotated[int, typer.Option(min=0, help="Rows shown per category.")] = DIFF_ROWS,
) -> None:
    """Objects added, removed, changed (content) and moved between splits from A to B."""
    from tasks.dataset import diff_snapshots

    result = diff_snapshots(research_store(ctx), a, b)
    out.print(
        f"{a} -> {b}: {result.added.num_rows} added, {result.removed.num_rows} removed, "
        f"{result.changed.num_rows} changed, {result.moved.num_rows} moved between splits"
    )
    for title, rows in (
        ("added", result.added),
        ("removed", result.removed),
        ("changed", result.changed),
        ("moved", result.moved),
    ):
        if rows.num_rows and limit:
            table = Table(title=f"{title} ({rows.num_rows})")
            for column in rows.column_names:
                table.add_column(column, overflow="fold")
            for row in rows.slice(0, limit).to_pylist():
                table.add_row(*("-" if v is None else str(v) for v in row.values()))
            out.print(table)


@snapshot_app.command("export")
def export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot to export.")],
    output: Annotated[
        str | None,
        typer.Option(help="Folder or s3:// URL to write to. [default: snapshots/NAME/export]"),
    ] = None,
) -> None:
    """Write, per split, what a training job needs to read the objects.

    One `<split>.jsonl` per split (URL, version id and SHA-256 of each object)
    plus `index.json`; read them with `tasks.dataset.reader.iter_export`, which
    checks every hash as it reads.
    """
    from tasks.dataset import export_snapshot

    settings = settings_of(ctx)
    target = settings.store(output) if output else None
    result = export_snapshot(research_store(ctx), name, target)
    table = Table(title=f"export of {name!r}: {result.url}")
    table.add_column("split")
    table.add_column("objects", justify="right")
    table.add_column("file")
    for part, url in result.files.items():
        table.add_row(part, str(result.counts[part]), url)
    out.print(table)


@snapshot_app.command("prove")
def prove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot.")],
    key: Annotated[str, typer.Argument(help="Object key whose membership to prove.")],
) -> None:
    """Print one object's manifest entry and its Merkle inclusion proof (JSON).

    Anyone holding only the top hash can check the proof with
    tasks.dataset.reader.verify_proof.
    """
    import dataclasses

    import pyarrow.compute as pc

    from tasks.dataset import entries, load_card, load_manifest, verify_proof
    from tasks.dataset import prove as prove_entry

    store = research_store(ctx)
    card = load_card(store, name)
    manifest = load_manifest(store, name, card)
    found = list(entries(manifest.filter(pc.equal(manifest["key"], key))))
    if not found:
        raise InvalidInput(f"{key} is not in snapshot {name!r}")
    proof = prove_entry(manifest, found[0])
    document = {
        "top_hash": card["top_hash"],
        "entry": dataclasses.asdict(found[0]),
        "proof": dataclasses.asdict(proof),
        "valid": verify_proof(card["top_hash"], found[0], proof),
    }
    out.print_json(json.dumps(document))


def register(app: typer.Typer) -> None:
    app.command("split")(split)
    app.add_typer(snapshot_app, name="snapshot")

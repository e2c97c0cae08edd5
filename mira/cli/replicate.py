"""``mira replicate`` and ``mira replicate status``: the local research store copied to remotes.

Targets are ``name=s3://bucket/prefix`` (``--target``, repeatable, or ``MIRA_REPLICATE_TARGETS``),
each with its own endpoint and credentials (``MIRA_REMOTE_<NAME>_ENDPOINT_URL``,
``..._ACCESS_KEY_ID``, ``..._SECRET_ACCESS_KEY``, ``..._REGION``). See docs/replication.md.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mira.cli.common import console, out, settings_of
from mira.errors import ConfigError, IntegrityError, TransientStoreError
from mira.settings import Settings
from storage import Store

if TYPE_CHECKING:
    from tasks.replicate import RemoteTarget

replicate_app = typer.Typer(
    help="Copy published batches to remote object storage, verified and resumable.",
    invoke_without_command=True,
)

TargetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="name=s3://bucket/prefix; repeat for several [env: MIRA_REPLICATE_TARGETS]",
        show_default=False,
    ),
]


def _site(settings: Settings, targets: list[str]) -> tuple[Store, list[RemoteTarget]]:
    """The local research store and the targets, none of which may be a local store."""
    from tasks.replicate import targets_from

    resolved = targets_from(targets, os.environ)
    local = settings.research()
    gateway_url = settings.gateway_url
    for target in resolved:
        if target.url.rstrip("/") in (local.url.rstrip("/"), gateway_url.rstrip("/")):
            raise ConfigError(f"target {target.name} is a local store ({target.url})")
    if local.url.rstrip("/") == settings.gateway().url.rstrip("/"):
        raise ConfigError("the research store is the gateway store: nothing is replicated")
    return local, resolved


@replicate_app.callback()
def run(
    ctx: typer.Context,
    target: TargetOption = None,
    max_mbps: Annotated[
        float | None,
        typer.Option(help="Bandwidth cap in megabits per second.", min=0.001, show_default=False),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Objects in flight at once.", min=1)] = 4,
    part_mib: Annotated[
        int, typer.Option(help="Objects this large (MiB) or larger go multipart.", min=5)
    ] = 16,
    attempts: Annotated[
        int, typer.Option(help="Attempts per object on timeouts, throttling, damage.", min=1)
    ] = 5,
    batch: Annotated[
        list[str] | None,
        typer.Option(
            help="Only this batch; repeat for several (default: all).", show_default=False
        ),
    ] = None,
    reverify: Annotated[
        bool,
        typer.Option(
            "--reverify", help="Check replicated batches on the remote too; resend any damage."
        ),
    ] = False,
) -> None:
    """Copy every published batch, in publish order, to each target; resumes where a killed
    or cut-off run stopped. Only catalog-listed objects whose bytes match their SHA-256 go."""
    if ctx.invoked_subcommand is not None:
        return
    from tasks.replicate import BatchReport, LinkOptions, replicate

    local, targets = _site(settings_of(ctx), target or [])
    options = LinkOptions(
        max_mbps=max_mbps,
        concurrency=concurrency,
        part_bytes=part_mib * 1024 * 1024,
        attempts=attempts,
    )

    def landed(report: BatchReport) -> None:
        if report.status == "already":
            return
        line = f"{report.target} {report.batch}: {report.status}"
        if report.status == "replicated":
            line += f" ({report.sent} sent, {report.present} present, {report.sent_bytes} bytes)"
        if report.resent:
            line += f", {len(report.resent)} damaged remote copies sent again"
        if report.refused:
            line += f", refused (not matching the catalog): {', '.join(report.refused)}"
        if report.detail and report.status != "replicated":
            line += f": {report.detail}"
        out.print(line, highlight=False, soft_wrap=True)

    summary = replicate(
        local,
        targets,
        options,
        batches=batch,
        reverify=reverify,
        on_batch=landed,
    )
    already = summary.count("already")
    out.print(
        f"replicated {summary.count('replicated')} batches ({summary.sent_bytes} bytes sent), "
        f"{already} already there, {summary.count('held')} held by another replicator"
    )
    blocked = [r for r in summary.reports if r.status == "blocked"]
    failed = [r for r in summary.reports if r.status == "failed"]
    if blocked:
        raise IntegrityError(
            f"batch {blocked[0].batch}: local objects do not match the catalog; not replicated"
        )
    if failed:
        raise TransientStoreError(
            f"batch {failed[0].batch} to {failed[0].target} stopped: {failed[0].detail}; "
            "run mira replicate again to resume"
        )


@replicate_app.command("status")
def status(
    ctx: typer.Context,
    target: TargetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Lag per target: batches, objects and bytes not yet replicated, the oldest of them, and
    the time to catch up at the rate measured on recent batches."""
    from tasks.replicate import target_lag

    local, targets = _site(settings_of(ctx), target or [])
    lags = [target_lag(local, t.name) for t in targets]
    if as_json:
        out.print_json(json.dumps([lag.as_dict() for lag in lags]))
        return
    table = Table(
        "target", "replicated", "lag batches", "objects", "bytes", "oldest", "rate", "ETA"
    )
    for lag in lags:
        table.add_row(
            lag.target,
            str(lag.replicated_batches),
            str(lag.batches),
            str(lag.objects),
            str(lag.bytes),
            lag.oldest_unreplicated or "-",
            f"{lag.rate_bytes_per_s * 8 / 1e6:.1f} Mbit/s" if lag.rate_bytes_per_s else "-",
            _duration(lag.eta_seconds),
        )
    out.print(table)
    if any(lag.batches for lag in lags):
        console.print("run `mira replicate` to catch up", highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no rate measured yet)"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def register(app: typer.Typer) -> None:
    app.add_typer(replicate_app, name="replicate")

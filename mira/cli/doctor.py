"""``mira doctor``: the security posture of the configured stores and Prefect server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mira.cli.common import out, settings_of

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def doctor(
    ctx: typer.Context,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            envvar="MIRA_ACCESS_POLICY",
            help="The access policy to compare with the server's users and policies.",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON records.")] = False,
) -> None:
    """Check TLS, encryption at rest, versioning, Object Lock, the access policy on the server,
    who may read the gateway, and Prefect's analytics and telemetry: pass, warn or fail per
    line; exit code 1 when a line fails. Writes (and removes) one tiny probe object per store."""
    from mira.access import load_policy
    from mira.doctor import examine, failed

    policy = load_policy(policy_file) if policy_file else None
    checks = examine(settings_of(ctx), policy)
    if json_output:
        typer.echo(json.dumps([check.row() for check in checks], indent=1))
    else:
        view = Table(title="mira doctor")
        for column in ("check", "target", "status", "detail"):
            view.add_column(column, overflow="fold")
        for check in checks:
            status = f"[{STYLE[check.status]}]{check.status}[/]"
            view.add_row(check.check, check.target, status, check.detail)
        out.print(view)
    if failed(checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)

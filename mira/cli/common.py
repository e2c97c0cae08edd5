"""What every command module shares: the consoles and the settings of the invocation."""

from __future__ import annotations

import typer
from rich.console import Console

from mira.settings import Settings

console = Console(stderr=True)
out = Console()


def settings_of(ctx: typer.Context) -> Settings:
    """The settings that the common options of ``mira`` produced."""
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):
        raise typer.BadParameter("settings were not initialised")
    return settings

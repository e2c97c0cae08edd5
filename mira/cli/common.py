"""What every command module shares: the consoles and the settings of the invocation."""

from __future__ import annotations

import typer
from rich.console import Console

from mira.errors import ObjectNotFound
from mira.settings import Settings
from storage import Store

console = Console(stderr=True)
out = Console()


def settings_of(ctx: typer.Context) -> Settings:
    """The settings that the common options of ``mira`` produced."""
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):
        raise typer.BadParameter("settings were not initialised")
    return settings


def research_store(ctx: typer.Context) -> Store:
    """The research store of the invocation; an error when it holds no catalog (a wrong path,
    a wrong bucket, or a relative default resolved from another folder)."""
    from tasks.dataset import has_catalog

    store = settings_of(ctx).research()
    if not has_catalog(store):
        raise ObjectNotFound(
            f"no catalog at {store.url_of('catalog')}: is this the research store? "
            "check --research / MIRA_RESEARCH_URL"
        )
    return store

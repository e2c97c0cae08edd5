"""The ``mira`` command line: one entry per stage, plus sample data and the demo."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from mira import __version__
from mira.audit import audited
from mira.cli.common import console, out
from mira.errors import MiraError
from mira.settings import load_settings

COMMAND_PATH = "mira.command_path"


class MiraGroup(TyperGroup):
    """The root group; it notes the invoked command's full path (``snapshot create``) for the
    audit record before the group's callback runs."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        names, command = [], self
        for word in args:
            sub = getattr(command, "commands", {}).get(word)
            if sub is None:
                break
            names.append(word)
            command = sub
        ctx.meta[COMMAND_PATH] = " ".join(names)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="mira",
    cls=MiraGroup,
    help="mira: turn raw imaging uploads into de-identified, versioned training datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"mira {__version__}")
        raise typer.Exit()


@app.callback()
def common(
    ctx: typer.Context,
    gateway: Annotated[
        str | None,
        typer.Option(help="Gateway store (PHI side) [env: MIRA_GATEWAY_URL]", show_default=False),
    ] = None,
    research: Annotated[
        str | None,
        typer.Option(
            help="Research store (de-identified) [env: MIRA_RESEARCH_URL]", show_default=False
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(help="S3 endpoint URL [env: MIRA_S3_ENDPOINT_URL]", show_default=False),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler; empty starts a LocalCluster [env: MIRA_DASK_ADDRESS]",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Settings come from MIRA_* environment variables; these flags override them."""
    configure_logging(verbose)
    flags = {
        "gateway_url": gateway,
        "research_url": research,
        "s3_endpoint_url": s3_endpoint,
        "dask_address": dask_address,
    }
    ctx.obj = settings = load_settings(**flags)
    if ctx.invoked_subcommand not in (None, "audit"):
        # One audit record per command, of what it did to the stores (mira.audit).
        operation = ctx.meta.get(COMMAND_PATH) or ctx.invoked_subcommand
        ctx.with_resource(audited(settings, operation))
    # Flows read their settings from the environment (as on a Prefect worker): flags given
    # here must reach the flows this command runs in-process.
    for name, value in flags.items():
        if value is not None:
            os.environ[f"MIRA_{name.upper()}"] = value


def configure_logging(verbose: bool) -> None:
    """WARNING and up by default; INFO with ``--verbose``. Dask's chatter stays at WARNING."""
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("distributed", "tornado", "bokeh", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The module of each command: main() imports only the one typed, so ``mira deid`` does not
# load what other commands need (pyarrow, httpx...). A command missing here still works: all
# modules are then registered, as for ``mira --help`` (tests/test_deid_command.py checks it).
COMMAND_MODULES = {
    "sample-data": "sample",
    "demo": "pipeline",
    "run": "pipeline",
    "deid": "deid",
    "phi-scan": "deid",
    "convert": "convert",
    "export-dicom": "convert",
    "catalog": "catalog",
    "ls": "catalog",
    "qa": "qa",
    "review": "review",
    "quarantine": "quarantine",
    "snapshot": "snapshot",
    "split": "snapshot",
    "replicate": "replicate",
    "serve": "serve",
    "sensor": "serve",
    "access": "access",
    "doctor": "doctor",
    "audit": "audit",
}


def register_commands(command: str | None = None) -> None:
    """Attach the commands of the module that registers ``command`` to ``app``; every command
    module's commands when ``command`` is None or not known."""
    module = COMMAND_MODULES.get(command or "")
    if module is not None:
        importlib.import_module(f"mira.cli.{module}").register(app)
        return
    from mira.cli import (
        access,
        audit,
        catalog,
        convert,
        deid,
        doctor,
        pipeline,
        qa,
        quarantine,
        replicate,
        review,
        sample,
        serve,
        snapshot,
    )

    sample.register(app)
    pipeline.register(app)
    deid.register(app)
    convert.register(app)
    catalog.register(app)
    qa.register(app)
    review.register(app)
    quarantine.register(app)
    snapshot.register(app)
    replicate.register(app)
    serve.register(app)
    access.register(app)
    doctor.register(app)
    audit.register(app)


def plain_flags(command: Any) -> Any:
    """Show no value type after options that take none (``--verbose``, ``--help``), in
    ``command`` and every sub-command; typer's help prints ``<bool>`` after them."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub_command in getattr(command, "commands", {}).values():
        plain_flags(sub_command)
    return command


def typed_command(args: Sequence[str]) -> str | None:
    """The command word of a command line (``-v --gateway URL deid ...`` -> ``deid``); None when
    there is none (``--help``, ``--version``)."""
    takes_value = {
        name
        for param in typer.main.get_command(app).params
        if param.param_type_name == "option" and not getattr(param, "is_flag", False)
        for name in param.opts
    }
    words = iter(args)
    for word in words:
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> None:
    """Console entry point: expected errors print one line and exit 1; bad usage exits 2."""
    register_commands(typed_command(sys.argv[1:]))
    try:
        plain_flags(typer.main.get_command(app))(standalone_mode=True)
    except MiraError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)

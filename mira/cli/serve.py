"""``mira serve`` (a local Prefect server with the deployments and a worker) and ``mira sensor``."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from mira.cli.common import console, out, settings_of
from mira.cli.stack import (
    DATABASE_URL_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    WORK_POOL,
    PrefectStack,
    ServeConfig,
    ServeError,
)
from mira.errors import ConfigError
from mira.settings import Settings


def store_environment(settings: Settings) -> dict[str, str]:
    """The MIRA_* settings the worker's flow runs need, local folders made absolute."""
    env = {
        "MIRA_GATEWAY_URL": _absolute(settings.gateway_url),
        "MIRA_RESEARCH_URL": _absolute(settings.research_url),
    }
    if settings.s3_endpoint_url:
        env["MIRA_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.dask_address:
        env["MIRA_DASK_ADDRESS"] = settings.dask_address
    return env


def _absolute(url: str) -> str:
    """Flow runs start in the repository root, so a relative folder must not move with them:
    the store's own URL, which is absolute."""
    from storage import open_store

    return open_store(url).url


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop mira cleanly, even where the shell started it ignoring SIGINT.

    A handler (unlike an ignored signal) is reset in the children, so they can be stopped too.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        DEFAULT_HOST
    ),
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = DEFAULT_PORT,
    home: Annotated[
        Path, typer.Option(help="Folder of the server's state (SQLite database, logs).")
    ] = Path("data/prefect"),
    database_url: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL URL (postgresql+asyncpg://...); empty: SQLite in --home.",
            envvar=DATABASE_URL_ENV,
            show_default=False,
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="Process work pool of the deployments.")] = WORK_POOL,
) -> None:
    """Start a Prefect server, register mira's deployments, start a worker; Ctrl-C stops all."""
    settings = settings_of(ctx)
    config = ServeConfig(
        home=home.absolute(),
        host=host,
        port=port,
        pool=pool,
        database_url=database_url,
        extra_env=store_environment(settings),
    )
    stop_on_signals()
    stack = PrefectStack(config)
    try:
        console.print(f"starting the Prefect server on {config.base_url} (state in {home})")
        stack.start()
        if (
            settings.deid_secret is None
            and settings.deid_secret_file is None
            and settings.deid_secret_block is None
        ):
            console.print(
                "[yellow]no MIRA_DEID_SECRET / MIRA_DEID_SECRET_FILE / MIRA_DEID_SECRET_BLOCK:[/] "
                "pipeline runs will stop at de-identification"
            )
        for name in stack.skipped:
            console.print(f"[yellow]deployment {name} skipped:[/] its flow is not written yet")
        out.print(f"Prefect UI: {config.base_url}   (API: {config.api_url})")
        out.print(f"worker: pool {pool}; deployments from {config.prefect_file}")
        status = stack.wait()
        raise ServeError(f"a Prefect process exited (status {status}); stopping")
    except KeyboardInterrupt:
        console.print("stopping the worker and the server")
    finally:
        stack.stop()


def sensor(
    ctx: typer.Context,
    watch: Annotated[
        float | None,
        typer.Option(
            help="Keep scanning every this many seconds (a long-running sensor).",
            show_default=False,
            min=1.0,
        ),
    ] = None,
) -> None:
    """Announce each new ready drop-zone batch to Prefect (event mira.batch.ready) once."""
    settings = settings_of(ctx)
    if not settings.prefect_api_url:
        raise ConfigError("the sensor announces to a Prefect server: set PREFECT_API_URL")
    from mira.cli.pipeline import use_prefect_api

    use_prefect_api(settings)
    from flows.params import StoreParams
    from flows.sensor import dropzone_sensor, watch_dropzone

    env = store_environment(settings)
    stores = StoreParams(gateway_url=env["MIRA_GATEWAY_URL"], research_url=env["MIRA_RESEARCH_URL"])
    if watch is None:
        announced = dropzone_sensor(stores)
        out.print(f"announced: {', '.join(announced) or 'nothing new'}")
        return
    stop_on_signals()
    try:
        watch_dropzone(stores, interval_s=watch)
    except KeyboardInterrupt:
        console.print("sensor stopped")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("sensor")(sensor)

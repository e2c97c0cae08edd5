"""A local Prefect server with mira's deployments and a worker: what ``mira serve`` runs.

The server keeps its state under one project folder (``PREFECT_HOME``, SQLite there by
default; PostgreSQL when ``MIRA_PREFECT_DATABASE_URL`` or
``PREFECT_SERVER_DATABASE_CONNECTION_URL`` is set). Every child process (server, ``prefect
deploy``, worker and the worker's flow runs) gets the offline defaults, the API URL and
``MIRA_REPO_DIR``, where the deployments' pull step takes the flow runs.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from mira.errors import MiraError
from mira.offline import OFFLINE_DEFAULTS, apply_offline_defaults

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"
WORK_POOL = "mira-process"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
DEPLOY_TIMEOUT_S = 300.0
DATABASE_URL_ENV = "MIRA_PREFECT_DATABASE_URL"
PREFECT_DATABASE_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
REPO_DIR_ENV = "MIRA_REPO_DIR"

log = logging.getLogger(__name__)


class ServeError(MiraError):
    """The Prefect server, the deployment or the worker could not be started."""


@dataclass(frozen=True)
class ServeConfig:
    """Where the server listens and keeps its state, and what it registers."""

    home: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    pool: str = WORK_POOL
    database_url: str | None = None
    prefect_file: Path = PREFECT_FILE
    project_root: Path = PROJECT_ROOT
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The UI address."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The REST API address (``PREFECT_API_URL`` of every client)."""
        return f"{self.base_url}/api"


def prefect_environment(
    config: ServeConfig, base: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment of every child: ``base`` plus offline defaults, API URL, home, database."""
    env = {**OFFLINE_DEFAULTS, **base}
    home = config.home.absolute()
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = config.api_url
    env[REPO_DIR_ENV] = str(config.project_root)
    database_url = config.database_url or base.get(DATABASE_URL_ENV)
    if database_url:
        env[PREFECT_DATABASE_ENV] = database_url
    else:
        env.setdefault(PREFECT_DATABASE_ENV, f"sqlite+aiosqlite:///{home / 'prefect.db'}")
    env.update(config.extra_env)
    return env


def prefect_command(*args: str) -> list[str]:
    """The ``prefect`` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "prefect", *args]


def start_process(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, so that Ctrl-C reaches mira, which stops it in order."""
    output: IO[Any] | None = log_file.open("ab") if log_file else None
    try:
        return subprocess.Popen(
            list(args),
            env=dict(env),
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
    finally:
        if output:
            output.close()


def stop_process(
    process: subprocess.Popen[bytes],
    signum: int = signal.SIGTERM,
    timeout_s: float = STOP_TIMEOUT_S,
) -> None:
    """Stop a child of ``start_process``: ``signum`` to it, then SIGTERM, SIGKILL to its group.

    The grace period lets a worker hand back its runs; the group signals reach what the child
    started (the server's web process, a worker's flow runs, which then record a crash).
    """
    steps = (
        (lambda: process.send_signal(signum), timeout_s),
        (lambda: _signal_group(process, signal.SIGTERM), timeout_s),
        (lambda: _signal_group(process, signal.SIGKILL), None),
    )
    for send, grace in steps:
        if process.poll() is not None:
            return
        send()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("process %d still running after %.0f s", process.pid, grace)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return


def wait_until_healthy(
    api_url: str, process: subprocess.Popen[bytes], timeout_s: float = HEALTH_TIMEOUT_S
) -> None:
    """Poll the server's health endpoint; fail early when the server process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"the Prefect server exited with status {process.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise ServeError(f"the Prefect server at {api_url} was not healthy after {timeout_s:.0f} s")


def start_server(
    config: ServeConfig, env: Mapping[str, str], log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` on the configured loopback address (analytics off)."""
    config.home.mkdir(parents=True, exist_ok=True)
    args = prefect_command(
        "server", "start", "--host", config.host, "--port", str(config.port), "--analytics-off"
    )
    return start_process(args, env, config.project_root, log_file)


def ensure_work_pool(api_url: str, pool: str) -> None:
    """Create the process work pool unless it exists (a site's edits to it are kept)."""
    apply_offline_defaults()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
            log.info("created work pool %s", pool)


def deployment_entrypoints(config: ServeConfig) -> dict[str, str]:
    """Deployment name -> entry point, as ``prefect.yaml`` lists them."""
    document = yaml.safe_load(config.prefect_file.read_text()) or {}
    return {d["name"]: d["entrypoint"] for d in document.get("deployments", [])}


def deployable(config: ServeConfig) -> tuple[list[str], list[str]]:
    """Deployments whose flow file exists, and those whose flow is not written yet."""
    ready: list[str] = []
    missing: list[str] = []
    for name, entrypoint in deployment_entrypoints(config).items():
        path = config.project_root / entrypoint.partition(":")[0]
        (ready if path.is_file() else missing).append(name)
    return ready, missing


def register_deployments(config: ServeConfig, env: Mapping[str, str], names: Sequence[str]) -> None:
    """``prefect deploy`` the named deployments of ``prefect.yaml`` (schedules and triggers)."""
    if not names:
        return
    args = prefect_command("--no-prompt", "deploy", "--prefect-file", str(config.prefect_file))
    for name in names:
        args += ["--name", name]
    result = subprocess.run(
        args,
        env=dict(env),
        cwd=config.project_root,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise ServeError(f"prefect deploy failed (status {result.returncode}):\n{tail}")
    log.info("registered deployments: %s", ", ".join(names))


def start_worker(
    config: ServeConfig,
    env: Mapping[str, str],
    log_file: Path | None = None,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start a process worker on the work pool, in the repository root."""
    args = prefect_command("worker", "start", "--pool", config.pool, *extra_args)
    return start_process(args, env, config.project_root, log_file)


def wait_for_exit(processes: Sequence[subprocess.Popen[bytes]], poll_s: float = 1.0) -> int:
    """Block until one of ``processes`` exits; returns its status."""
    while True:
        for process in processes:
            if (status := process.poll()) is not None:
                return status
        time.sleep(poll_s)


@dataclass
class PrefectStack:
    """Server, work pool, deployments and worker, started in order and stopped in reverse."""

    config: ServeConfig
    log_dir: Path | None = None
    worker_args: Sequence[str] = ()
    register: bool = True
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None
    skipped: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start the server, wait until it is healthy, register everything, start the worker."""
        env = prefect_environment(self.config)
        server = start_server(self.config, env, self._log("server"))
        self.processes.append(server)
        wait_until_healthy(self.config.api_url, server)
        ensure_work_pool(self.config.api_url, self.config.pool)
        if self.register:
            ready, self.skipped = deployable(self.config)
            for name in self.skipped:
                log.warning("deployment %s skipped: its flow file does not exist yet", name)
            register_deployments(self.config, env, ready)
        self.worker = start_worker(self.config, env, self._log("worker"), self.worker_args)
        self.processes.append(self.worker)

    def stop(self) -> None:
        """Stop the worker first (SIGINT: it stops taking runs), then the server."""
        for process in reversed(self.processes):
            stop_process(process, signal.SIGINT if process is self.worker else signal.SIGTERM)
        self.processes.clear()
        self.worker = None

    def wait(self) -> int:
        """Block until the server or the worker exits; returns its status."""
        return wait_for_exit(self.processes)

    def _log(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def __enter__(self) -> PrefectStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A real, throwaway Prefect server for the tests: mira's own stack on a free loopback port.

It is ``mira serve`` (``mira.cli.stack.PrefectStack``) with its state in a temporary folder, the
scheduler service off (schedules register, but create no runs while the tests look) and a
worker that polls every second.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mira.cli.stack import PrefectStack, ServeConfig

TEST_SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def free_port() -> int:
    """A TCP port nobody listens on right now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrefectTestServer:
    """Server, work pool, every deployment of ``deployments/prefect.yaml`` and a worker."""

    root: Path
    env: Mapping[str, str] = field(default_factory=dict)
    stack: PrefectStack | None = None

    @property
    def config(self) -> ServeConfig:
        """The stack's configuration (valid once started)."""
        if self.stack is None:
            raise RuntimeError("the test server is not running")
        return self.stack.config

    @property
    def api_url(self) -> str:
        return self.config.api_url

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start(self) -> None:
        """Start everything; on failure show the server and worker logs."""
        config = ServeConfig(
            home=self.root / "prefect",
            port=free_port(),
            extra_env={**TEST_SERVER_ENV, **self.env},
        )
        self.stack = PrefectStack(config, log_dir=self.logs)
        try:
            self.stack.start()
        except BaseException as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.log_tail()}") from err

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's and the worker's logs, for failure messages."""
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

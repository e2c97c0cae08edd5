"""Fixtures for tests marked ``prefect`` (one real Prefect server per session) and webhooks.

Load with ``pytest_plugins = ["tests.prefect_fixtures"]`` in a test module.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_server import PrefectTestServer


@dataclass(frozen=True)
class PrefectStores:
    """The local gateway and research stores that the worker's flow runs use by default."""

    gateway: Path
    research: Path


@pytest.fixture(scope="session")
def prefect_stores(tmp_path_factory: pytest.TempPathFactory) -> PrefectStores:
    root = tmp_path_factory.mktemp("prefect-stores")
    return PrefectStores(gateway=root / "gateway", research=root / "research")


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, prefect_stores: PrefectStores
) -> Iterator[PrefectTestServer]:
    """``mira serve``'s stack on a free port: server, work pool, deployments, worker."""
    server = PrefectTestServer(
        tmp_path_factory.mktemp("prefect-server"),
        env={
            "MIRA_GATEWAY_URL": str(prefect_stores.gateway),
            "MIRA_RESEARCH_URL": str(prefect_stores.research),
            "MIRA_DEID_SECRET": secrets.token_hex(32),
            "MIRA_DASK_WORKERS": "1",
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefect_api(prefect_server: PrefectTestServer) -> Iterator[str]:
    """Point this process's Prefect client (flows run here, client calls) at the test server.

    Afterwards the in-process log and event senders are drained while the server still runs;
    left for interpreter exit, they would retry a stopped server for a minute.
    """
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        try:
            yield prefect_server.api_url
        finally:
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers with scripted status codes, then 200."""

    statuses: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        status = self.statuses.pop(0) if self.statuses else 200
        record = {"headers": headers, "json": json.loads(body), "status": status}
        self.requests.append(record)
        if status < 300:
            self.accepted.append(record)
        return status


@pytest.fixture
def webhook_receiver() -> Iterator[Receiver]:
    """A loopback HTTP server recording every POST; tests script its answers."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = state.handle(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

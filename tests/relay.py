"""A TCP relay in front of the test S3 server that a test can cut: a network outage on demand.

Clients reach the server through ``relay.config``; ``cut()`` closes the listening socket and
every relayed connection, so requests in flight fail mid-way and new ones are refused. A
``busy`` relay answers every request 503 itself and counts them. A slow link waits ``delay_s``
before forwarding each chunk; ``flip_once`` damages the link: one byte in the middle of the first
large chunk sent towards the server (a request body) is inverted, as a faulty NIC or middlebox
might, once. A ``counting`` relay adds up the bytes it forwards towards the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit

from storage.base import S3Config

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset
FLIP_MIN_CHUNK = 16384  # a chunk this large is inside a body: headers are far smaller
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class Relay:
    """Forwards loopback connections to ``config``'s endpoint until ``cut``."""

    def __init__(
        self,
        config: S3Config,
        *,
        busy: bool = False,
        delay_s: float = 0.0,
        flip_once: bool = False,
        counting: bool = False,
    ) -> None:
        target = urlsplit(config.endpoint_url or "")
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.config = dataclasses.replace(config, endpoint_url=f"http://127.0.0.1:{port}")
        self.requests = 0
        self.busy = busy  # answer every request 503 Service Unavailable instead of relaying
        self.delay_s = delay_s
        self.flip_pending = flip_once
        self.flipped = 0  # bytes inverted so far
        self.counting = counting
        self.upstream_bytes = 0  # bytes forwarded towards the server (when counting)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.busy:
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
                continue
            with self._lock:
                if self._cut.is_set():
                    _reset(client)
                    return
                upstream = socket.create_connection(self.target)
                self._sockets += [client, upstream]
            if self.delay_s or self.flip_pending or self.counting:
                threading.Thread(target=self._damage, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        """Answer each request on the connection 503, as an overloaded server does."""
        with contextlib.suppress(OSError), client:
            received = b""
            while chunk := client.recv(65536):
                received += chunk
                while b"\r\n\r\n" in received:  # requests without bodies: GET, HEAD
                    _, received = received.split(b"\r\n\r\n", 1)
                    with self._lock:
                        self.requests += 1
                    client.sendall(BUSY)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _damage(self, source: socket.socket, sink: socket.socket) -> None:
        """Forward towards the server slowly, or with one byte inverted in a request body."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s)
                if len(data) >= FLIP_MIN_CHUNK:
                    with self._lock:
                        flip, self.flip_pending = self.flip_pending, False
                    if flip:
                        damaged = bytearray(data)
                        damaged[len(data) // 2] ^= 0xFF
                        data = bytes(damaged)
                        self.flipped += 1
                sink.sendall(data)
                if self.counting:
                    with self._lock:
                        self.upstream_bytes += len(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """The outage: no new connections, and every open one reset."""
        self._cut.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                _reset(sock)
            self._sockets.clear()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed server or a dropped link does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        sock.close()

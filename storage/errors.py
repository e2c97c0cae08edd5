"""Backend errors translated once into mira's errors, and retries for the transient ones.

Retries here are short (a fraction of a second to a couple of seconds) and cover one request:
throttling, a 5xx, a dropped connection. Longer outages are the flow's business: Prefect retries
the whole task (``flows/retry.py``), which is idempotent through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, ParamSpec, TypeVar

from mira.errors import (
    AccessDenied,
    AlreadyExists,
    MiraError,
    ObjectLocked,
    ObjectNotFound,
    StoreError,
    TransientStoreError,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
NOT_FOUND_CODES = frozenset(
    {
        "NoSuchKey",
        "NoSuchBucket",
        "NoSuchVersion",
        "404",
        "NotFound",
        "ObjectLockConfigurationNotFoundError",
        "NoSuchObjectLockConfiguration",
    }
)
EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
LOCK_CODES = frozenset({"InvalidRequest", "ObjectLocked"})
RETRY_ATTEMPTS = 3
RETRY_BASE_SECONDS = 0.2


def _error_code(err: BaseException) -> str | None:
    """The S3 error code behind an exception, following s3fs's ``raise ... from``."""
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise backend exceptions as mira's errors, naming ``url`` (mira's own pass as they are)."""
    try:
        yield
    except MiraError:
        raise
    except Exception as err:
        raise classify(err, url) from err


def classify(err: Exception, url: str) -> StoreError:
    """The mira error that matches a backend exception."""
    code = _error_code(err)
    detail = f"{url}: {err}"
    if _is_tls_failure(err):
        endpoint = re.search(r"https://[^\s/]+", " ".join(str(e) for e in _chain(err)))
        where = f" at {endpoint.group(0)}" if endpoint else ""
        return StoreError(
            f"TLS verification failed for {url}{where}: the endpoint's certificate is not "
            "signed by a trusted CA (set MIRA_S3_CA_BUNDLE to the CA file that signs it)"
        )
    if code in EXISTS_CODES:
        return AlreadyExists(f"object already exists: {url}")
    if code in NOT_FOUND_CODES or isinstance(err, FileNotFoundError):
        return ObjectNotFound(f"no such object: {url}")
    if code in TRANSIENT_CODES or isinstance(
        err, ConnectionError | TimeoutError | asyncio.TimeoutError
    ):
        return TransientStoreError(f"transient storage error at {detail}")
    if code == "AccessDenied" or isinstance(err, PermissionError):
        return AccessDenied(f"access denied: {detail}")
    if code in LOCK_CODES and "lock" in str(err).lower():
        return ObjectLocked(f"object is locked: {detail}")
    if _looks_like_network_failure(err):
        return TransientStoreError(f"transient storage error at {detail}")
    return StoreError(f"storage error at {detail}")


NETWORK_FAILURES = frozenset(
    {
        "EndpointConnectionError",  # botocore
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseParserError",
        "IncompleteRead",  # urllib3 / http.client: a body cut short
        "ClientConnectorError",  # aiohttp
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientOSError",
        "ClientPayloadError",
        "FSTimeoutError",  # fsspec
    }
)


TLS_FAILURES = frozenset(
    {"SSLCertVerificationError", "ClientConnectorCertificateError", "CertificateError"}
)


def _is_tls_failure(err: BaseException) -> bool:
    """Whether the chain holds a certificate verification failure: a fault of configuration,
    never transient, so it is neither retried nor reported as a network blip."""
    return any(type(e).__name__ in TLS_FAILURES for e in _chain(err))


def _looks_like_network_failure(err: BaseException) -> bool:
    """Whether a network failure (by class name: storage imports no client library here) lies
    anywhere in the exception's chain; s3fs re-raises them wrapped or bare."""
    return any(type(e).__name__ in NETWORK_FAILURES for e in _chain(err))


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = err
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def with_retries(fn: Callable[P, T]) -> Callable[P, T]:
    """Retry ``fn`` on ``TransientStoreError`` with exponential backoff; other errors pass at once."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except TransientStoreError as err:
                if attempt == RETRY_ATTEMPTS:
                    raise
                time.sleep(_backoff(err, attempt))
        raise AssertionError("unreachable")

    return wrapper


async def retry_async(call: Callable[[], Awaitable[T]], url: str) -> T:
    """Await ``call()`` with errors translated (naming ``url``), retrying transient ones as
    ``with_retries`` does: the same policy for requests made on an event loop."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            try:
                return await call()
            except MiraError:
                raise
            except Exception as err:
                raise classify(err, url) from err
        except TransientStoreError as err:
            if attempt == RETRY_ATTEMPTS:
                raise
            await asyncio.sleep(_backoff(err, attempt))
    raise AssertionError("unreachable")


def _backoff(err: TransientStoreError, attempt: int) -> float:
    """The pause before the next attempt, logged with the error that caused it."""
    delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    log.warning("%s (attempt %d/%d, retrying in %.1fs)", err, attempt, RETRY_ATTEMPTS, delay)
    return delay


class TranslatedReader(io.RawIOBase):
    """A store's read stream whose backend failures, mid-read included, are mira's errors.

    A transient failure of one read (a dropped connection) is retried from the same position,
    as one request is; argument errors (``ValueError``, ``TypeError``) pass unchanged. Other
    attributes (``name``, ``fileno``, ``size``) are the wrapped stream's.
    """

    def __init__(self, stream: IO[bytes], url: str, *, retry: bool = False) -> None:
        super().__init__()
        self._stream = stream
        self.url = url
        self._retry = retry

    def __getattr__(self, name: str) -> Any:
        if name == "_stream":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self._stream, name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._stream.fileno()

    def read(self, size: int | None = -1) -> bytes:
        return self._attempt(lambda: self._stream.read(-1 if size is None else size))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return int(self._attempt(lambda: readinto(buffer)))
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and not 0 <= offset < 2**62:
            raise ValueError(f"seek to offset {offset} out of range in {self.url}")
        with self._translated():
            return self._stream.seek(offset, whence)

    def tell(self) -> int:
        with self._translated():
            return self._stream.tell()

    def close(self) -> None:
        if not self.closed:
            try:
                with self._translated():
                    self._stream.close()
            finally:
                super().close()

    def _attempt(self, read: Callable[[], T]) -> T:
        if not self._retry:
            with self._translated():
                return read()
        start = self._stream.tell()
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                with self._translated():
                    return read()
            except TransientStoreError as err:
                if attempt == RETRY_ATTEMPTS:
                    raise
                time.sleep(_backoff(err, attempt))
                self._stream.seek(start)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (MiraError, ValueError, TypeError):
            raise
        except Exception as err:
            raise classify(err, self.url) from err

"""Backend errors translated once into mira's errors, and retries for the transient ones."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from mira.errors import (
    AccessDenied,
    AlreadyExists,
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
    """Re-raise backend exceptions as mira's errors, naming ``url``."""
    try:
        yield
    except StoreError:
        raise
    except Exception as err:
        raise classify(err, url) from err


def classify(err: Exception, url: str) -> StoreError:
    """The mira error that matches a backend exception."""
    code = _error_code(err)
    detail = f"{url}: {err}"
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


def _looks_like_network_failure(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ClientOSError",
        }
    )


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
                delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1)
                log.warning(
                    "%s (attempt %d/%d, retrying in %.1fs)", err, attempt, RETRY_ATTEMPTS, delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    return wrapper

"""What a store is asked to do, told to whoever listens: the audit trail's view of storage.

Every backend's reading, writing, deleting, locking and listing methods are wrapped once, here
(``Store.__init_subclass__`` calls ``observe_methods``), so no command or stage reports its own
operations and no backend can forget to. A listener (``mira.audit``'s scope) is set for one
command or flow run with ``observing``; without one the wrapping costs a context-variable read.

Calls a store makes to itself (``write_bytes`` to ``write_stream``, ``delete`` to ``info``) count
once, as the outer call. Work shipped to Dask workers runs outside the listener's context and
is not seen (the audit record says what the mira process itself did).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from storage.base import Store

Operation = Literal["read", "write", "delete", "lock", "list"]


@dataclass(frozen=True)
class Touch:
    """One store call: which operation on which keys (a key, or a prefix for many objects)."""

    operation: Operation
    store_url: str
    key: str
    objects: int | None = 1  # None: not known (a listing, a zarr store)
    size: int | None = None
    sha256: str | None = None


class Listener(Protocol):
    def saw(self, touch: Touch) -> None: ...


class _Off:
    """Reporting switched off in this context (the audit log's own writes)."""

    def saw(self, touch: Touch) -> None:
        return None


_OFF = _Off()
_listener: ContextVar[Listener | None] = ContextVar("mira_store_listener", default=None)
_inside_call: ContextVar[bool] = ContextVar("mira_inside_store_call", default=False)
_process_listener: list[Listener] = []  # the command's listener, for threads without its context


@contextlib.contextmanager
def observing(listener: Listener | None, *, process_wide: bool = False) -> Iterator[None]:
    """Report every store call made in this context to ``listener`` (None: to nobody).

    ``process_wide`` also reports the calls of threads that do not carry this context (a plain
    thread pool's): for a command, which is the only one running in its process.
    """
    token = _listener.set(listener if listener is not None else _OFF)
    if process_wide and listener is not None:
        _process_listener.append(listener)
    try:
        yield
    finally:
        _listener.reset(token)
        if process_wide and listener is not None:
            _process_listener.remove(listener)


def _current_listener() -> Listener | None:
    listener = _listener.get()
    if listener is None and _process_listener:
        listener = _process_listener[-1]
    return None if listener is _OFF else listener


def common_key_prefix(keys: list[str]) -> str:
    """The longest run of whole ``/``-segments every key starts with (the key itself for one)."""
    if not keys:
        return ""
    split = [key.split("/") for key in keys]
    shared = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        shared.append(parts[0])
    return "/".join(shared)


def _many(store: Store, objects: Mapping[str, Any], *_: Any, **__: Any) -> Touch:
    from storage.base import byte_view

    keys = list(objects)
    size = sum(byte_view(data).nbytes for data in objects.values())
    return Touch("write", store.url, common_key_prefix(keys), len(keys), size)


def _result_size(result: Any) -> int | None:
    if isinstance(result, bytes | bytearray):
        return len(result)
    if isinstance(result, list):
        return sum(len(part) for part in result)
    return getattr(result, "size", None)


def _describe(operation: Operation, store: Store, args: tuple[Any, ...], result: Any) -> Touch:
    key = str(args[0]) if args else ""
    if operation == "write" and len(args) >= 2 and isinstance(args[1], str):
        key = args[1]  # copy(src, dst): the write is the destination
    if isinstance(result, int) and not isinstance(result, bool):
        return Touch(operation, store.url, key, result)  # delete_prefix: how many went
    if operation == "list":
        return Touch(operation, store.url, key, None)
    return Touch(
        operation, store.url, key, 1, _result_size(result), getattr(result, "sha256", None)
    )


OBSERVED: dict[str, Operation] = {
    "open_read": "read",
    "read_bytes": "read",
    "read_ranges": "read",
    "write_stream": "write",
    "write_many": "write",
    "copy": "write",
    "delete": "delete",
    "delete_prefix": "delete",
    "set_retention": "lock",
    "list": "list",
}


def observe_methods(cls: type) -> None:
    """Wrap the methods of ``OBSERVED`` that ``cls`` defines itself."""
    for name, operation in OBSERVED.items():
        method = cls.__dict__.get(name)
        if method is not None and not getattr(method, "_mira_observed", False):
            setattr(cls, name, _observed(operation, method))


def _observed(operation: Operation, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(store: Store, *args: Any, **kwargs: Any) -> Any:
        listener = _current_listener()
        if listener is None or _inside_call.get():
            return method(store, *args, **kwargs)
        token = _inside_call.set(True)
        try:
            result = method(store, *args, **kwargs)
        finally:
            _inside_call.reset(token)
        if method.__name__ == "write_many":
            listener.saw(_many(store, *args, **kwargs))
        else:
            listener.saw(_describe(operation, store, args, result))
        return result

    call._mira_observed = True  # type: ignore[attr-defined]
    return call

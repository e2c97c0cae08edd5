"""The audit trail: one JSON record per command or flow run, appended to a chained, locked log in
the research store (``audit/<seq>.jsonl``).

A record says who (the S3 access key, or the OS user for local stores), what (the operation, and
per store and kind of access the keys or their common prefix, object count, bytes and SHA-256
where known), when, where (host) and with which mira version. What it lists comes from the
stores themselves (``storage.observe``): nothing here or in the commands reports by hand.

Each object of the log holds the records of one command or flow run and the SHA-256 of the
object before it (``prev_sha256``), so the objects form a chain: ``verify_log`` finds an object
edited, deleted or moved. Writers never overwrite: the next object is created with a
conditional PUT (``If-None-Match: *`` on S3, an exclusive create on disk) at the next sequence
number, so of two concurrent writers one wins and the other moves to the number after. On a
store with Object Lock every object is written under COMPLIANCE retention.

What the log cannot see: anything done to the store without mira (raw S3 requests with the
store's keys); ``docs/security.md`` says how to turn on the server's own access log for that.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import inspect
import json
import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from mira.errors import AlreadyExists, InvalidInput, MiraError, StoreError
from storage import Retention, Store
from storage.observe import Touch, common_key_prefix, observing

if TYPE_CHECKING:
    import pyarrow as pa

    from mira.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
AUDIT_PREFIX = "audit"
GENESIS = "0" * 64  # the prev_sha256 of the first object
KEY_PATTERN = re.compile(rf"^{AUDIT_PREFIX}/(\d{{12}})\.jsonl$")
KEYS_PER_ENTRY = 200  # keys listed per store and kind of access; beyond: counts and prefix
APPEND_ATTEMPTS = 20
TOUCH_ORDER = ("read", "list", "write", "delete", "lock")


def object_key(seq: int) -> str:
    """The key of the log's ``seq``-th object (from 1)."""
    return f"{AUDIT_PREFIX}/{seq:012d}.jsonl"


@dataclass
class _Entry:
    """What one command did to one store with one kind of access."""

    objects: int = 0
    bytes: int = 0
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    all_keys: list[str] = field(default_factory=list)
    counted: bool = True  # False when some touch had no object count (a listing)

    def add(self, touch: Touch, key: str, *, listed: bool = True) -> None:
        self.objects += touch.objects or 0
        self.counted = self.counted and touch.objects is not None
        self.bytes += touch.size or 0
        self.all_keys.append(key)
        if not listed:
            return
        if key not in self.keys and len(self.keys) < KEYS_PER_ENTRY:
            self.keys[key] = {"key": key, "bytes": touch.size, "sha256": touch.sha256}
        elif key in self.keys and touch.sha256:
            self.keys[key].update(bytes=touch.size, sha256=touch.sha256)


class AuditScope:
    """Collects what one command or flow run does to the stores, for its one record."""

    def __init__(
        self,
        operation: str,
        kind: str,
        roots: Callable[[], dict[str, str]],
    ) -> None:
        self.operation = operation
        self.kind = kind
        self._roots = roots  # store name -> root URL, asked when the first store call is seen
        self.roots: dict[str, str] | None = None
        self.started = datetime.now(UTC)
        self.entries: dict[tuple[str, str, str], _Entry] = {}
        self.stages: list[str] = []
        self.remote = False
        self._lock = threading.Lock()

    def saw(self, touch: Touch) -> None:
        full = f"{touch.store_url.rstrip('/')}/{touch.key}" if touch.key else touch.store_url
        store, root = self._root_of(full)
        key = full[len(root) :].strip("/") if root else ""
        research = store == "research"
        if research and (key == AUDIT_PREFIX or key.startswith(f"{AUDIT_PREFIX}/")):
            return  # reading the log (verify, query) is not an operation on the data
        if not research:
            # The record goes to the research store, where no PHI may go: names on the gateway
            # (a drop zone's folders) and in folders given on the command line can carry it.
            # Only the gateway's top folder (dropzone, quarantine...) and counts are kept.
            key = key.split("/", 1)[0] if store == "gateway" else ""
        with self._lock:
            self.remote = self.remote or full.startswith("s3://")
            entry = self.entries.setdefault((store, root, touch.operation), _Entry())
            entry.add(touch, key, listed=research)

    def _root_of(self, url: str) -> tuple[str, str]:
        if self.roots is None:
            self.roots = self._roots()
        for name, root in sorted(self.roots.items(), key=lambda item: -len(item[1])):
            if url == root or url.startswith(root.rstrip("/") + "/"):
                return name, root
        return "other", ""

    @property
    def touched(self) -> bool:
        return bool(self.entries)

    def record(self, outcome: str, error: str | None, who: str) -> dict[str, Any]:
        """The JSON record of everything seen so far."""
        stores = []
        for (store, root, operation), entry in sorted(
            self.entries.items(), key=lambda item: (item[0][0], TOUCH_ORDER.index(item[0][2]))
        ):
            stores.append(
                {
                    "store": store,
                    "url": root,
                    "access": operation,
                    "objects": entry.objects if entry.counted else None,
                    "bytes": entry.bytes,
                    "prefix": common_key_prefix(entry.all_keys),
                    "keys": list(entry.keys.values()),
                    "keys_listed": len(entry.keys) == len(set(entry.all_keys)),
                }
            )
        totals = {op: 0 for op in TOUCH_ORDER}
        for (_, _, operation), entry in self.entries.items():
            totals[operation] += entry.objects
        return {
            "id": uuid.uuid4().hex,
            "operation": self.operation,
            "kind": self.kind,
            "stages": self.stages,
            "who": who,
            "os_user": _os_user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "mira_version": _version(),
            "started": self.started.isoformat(),
            "ended": datetime.now(UTC).isoformat(),
            "outcome": outcome,
            "error": error,
            "objects_read": totals["read"],
            "objects_written": totals["write"],
            "objects_deleted": totals["delete"],
            "objects_locked": totals["lock"],
            "bytes_read": sum(s["bytes"] for s in stores if s["access"] == "read"),
            "bytes_written": sum(s["bytes"] for s in stores if s["access"] == "write"),
            "stores": stores,
        }


_scope: ContextVar[AuditScope | None] = ContextVar("mira_audit_scope", default=None)


@contextlib.contextmanager
def audited(
    settings: Settings,
    operation: str,
    *,
    kind: str = "command",
) -> Iterator[AuditScope | None]:
    """Record what the enclosed command or flow run does to the stores as one audit record.

    Inside another scope (a flow run by ``mira run``) this adds ``operation`` to the outer
    record's stages instead of writing its own. A run that touches no store writes nothing.
    The record is written even when the run fails (``outcome: failed``, the error's type only:
    messages may name files).
    """
    outer = _scope.get()
    if outer is not None or not settings.audit:
        if outer is not None:
            outer.stages.append(operation)
        yield outer
        return
    scope = AuditScope(operation, kind, lambda: _roots(settings))
    token = _scope.set(scope)
    try:
        # A command, and a flow run on a worker, is the only one running in its process:
        # threads that do not carry this context (a plain thread pool) report to it too.
        with observing(scope, process_wide=True):
            yield scope
    except BaseException as err:
        if getattr(err, "exit_code", None) in (0, None) and type(err).__name__ == "Exit":
            _finish(settings, scope, "ok", None)
        else:
            _finish(settings, scope, "failed", type(err).__name__)
        raise
    else:
        _finish(settings, scope, "ok", None)
    finally:
        _scope.reset(token)


def audited_flow(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a flow function (under ``@flow``) so that each run of it is one audit record,
    written to the research store of its ``stores`` parameter (else the worker's settings).
    Run inside a command (``mira run``), the flow is one of the command's stages instead."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            from mira.settings import load_settings

            stores = signature.bind_partial(*args, **kwargs).arguments.get("stores")
            settings = stores.settings() if stores is not None else load_settings()
            with audited(settings, operation, kind="flow"):
                return function(*args, **kwargs)

        # Prefect builds the run's parameter model from the signature: with the annotations
        # evaluated here, in the flow's module, not looked up in this one.
        with contextlib.suppress(NameError):
            run.__signature__ = inspect.signature(function, eval_str=True)  # type: ignore[attr-defined]
        return run

    return decorate


def _finish(settings: Settings, scope: AuditScope, outcome: str, error: str | None) -> None:
    if not scope.touched:
        return
    who = _identity(settings, scope.remote)
    record = scope.record(outcome, error, who)
    retention_days = settings.audit_retention_days
    with observing(None):
        try:
            append_records(settings.research(), [record], retention_days)
        except MiraError as err:
            raise StoreError(
                f"{scope.operation}: the audit record could not be written: {err}"
            ) from err


def _roots(settings: Settings) -> dict[str, str]:
    return {"research": settings.research().url, "gateway": settings.gateway().url}


def _identity(settings: Settings, remote: bool) -> str:
    """The principal: the S3 access key id when an S3 store was touched, else the OS user."""
    if remote and settings.s3_access_key_id:
        return f"s3:{settings.s3_access_key_id}"
    return f"os:{_os_user()}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _version() -> str:
    from mira import __version__

    return __version__


@dataclass(frozen=True)
class AuditObject:
    """One object of the log: its sequence number, key and SHA-256."""

    seq: int
    key: str
    sha256: str


def log_objects(store: Store) -> list[tuple[int, str]]:
    """The log's objects as (sequence number, key), in order; keys outside the pattern are
    left out (``verify_log`` reports them)."""
    found = []
    for info in store.list(AUDIT_PREFIX):
        matched = KEY_PATTERN.match(info.key)
        if matched:
            found.append((int(matched.group(1)), info.key))
    return sorted(found)


def append_records(
    store: Store, records: list[dict[str, Any]], retention_days: int = 0
) -> AuditObject:
    """Append ``records`` as the log's next object, chained to the one before; a concurrent
    writer that takes the number first makes this one retry at the number after."""
    for _ in range(APPEND_ATTEMPTS):
        last = _last_seq(store)
        seq, prev = (last + 1, store.sha256(object_key(last))) if last else (1, GENESIS)
        lines = [
            json.dumps({"seq": seq, "prev_sha256": prev, **r}, sort_keys=True, default=str)
            for r in records
        ]
        body = ("\n".join(lines) + "\n").encode()
        retention = None
        if retention_days > 0 and store.supports_object_lock:
            until = datetime.now(UTC) + timedelta(days=retention_days)
            retention = Retention(mode="COMPLIANCE", until=until)
        try:
            store.write_bytes(object_key(seq), body, exclusive=True, retention=retention)
        except AlreadyExists:
            continue
        _remember_last_seq(store, seq)
        return AuditObject(seq, object_key(seq), hashlib.sha256(body).hexdigest())
    raise StoreError(f"could not append to {store.url_of(AUDIT_PREFIX)}: too many writers at once")


def _hint_path(store: Store) -> Path:
    """Where this machine remembers the log's last number: a hint, checked before use."""
    base = store.cache_dir or Path.home() / ".cache" / "mira"
    return base / "audit-head" / hashlib.sha256(store.url.encode()).hexdigest()[:24]


def _last_seq(store: Store) -> int:
    """The number of the log's last object (0: empty). From the remembered hint when that object
    still exists, probing forward past what other machines appended since (a HEAD each);
    else by listing ``audit/``, which grows with the log. The conditional PUT, not this, is
    what keeps two writers from taking one number."""
    try:
        hint = int(_hint_path(store).read_text())
    except (OSError, ValueError):
        hint = 0
    if hint > 0 and store.exists(object_key(hint)):
        while store.exists(object_key(hint + 1)):
            hint += 1
        return hint
    objects = log_objects(store)
    return objects[-1][0] if objects else 0


def _remember_last_seq(store: Store, seq: int) -> None:
    path = _hint_path(store)
    with contextlib.suppress(OSError):  # only a hint: a read-only home costs a listing
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        temp.write_text(str(seq))
        temp.replace(path)


@dataclass(frozen=True)
class LogCheck:
    """What ``verify_log`` found: the chain's length and head, and every problem, by key."""

    objects: int
    records: int
    head_sha256: str
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_log(store: Store, expect: str | None = None) -> LogCheck:
    """Prove the log complete and untouched: numbers 1..n with no gap, each object's records
    naming its own number and the SHA-256 of the object before, no stray keys, one version per
    object (a versioned store keeps the old bytes of an overwrite) and a retention on each where
    the store has Object Lock. ``expect``: a head SHA-256 printed earlier, which must still be
    an object of the chain (what catches a cut or rewritten tail on a store without versions)."""
    problems = [
        f"{info.key}: not an audit object (stray key in {AUDIT_PREFIX}/)"
        for info in store.list(AUDIT_PREFIX)
        if not KEY_PATTERN.match(info.key)
    ]
    objects = log_objects(store)
    prev: str | None = GENESIS
    expected_seq, records = 1, 0
    hashes: set[str] = set()
    for seq, key in objects:
        if seq != expected_seq:
            missing = object_key(expected_seq)
            problems.append(
                f"{missing}: missing (the chain jumps from {expected_seq - 1} to {seq})"
            )
            prev = None  # the link across a gap is already reported as the gap
        body = store.read_bytes(key)
        problems.extend(_check_object(key, seq, body, prev))
        records += body.count(b"\n")
        prev, expected_seq = hashlib.sha256(body).hexdigest(), seq + 1
        hashes.add(prev)
    problems.extend(_check_versions(store, objects))
    if expect and expect not in hashes:
        problems.append(f"{AUDIT_PREFIX}/: no object has the expected SHA-256 {expect}")
    return LogCheck(len(objects), records, prev or GENESIS, problems)


def _check_object(key: str, seq: int, body: bytes, prev: str | None) -> list[str]:
    try:
        records = [json.loads(line) for line in body.decode().splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return [f"{key}: not JSON lines (changed)"]
    if not records:
        return [f"{key}: empty (changed)"]
    problems = []
    if any(r.get("seq") != seq for r in records):
        problems.append(f"{key}: its records name another sequence number (moved or reordered)")
    if prev is not None and any(r.get("prev_sha256") != prev for r in records):
        problems.append(
            f"{key}: prev_sha256 does not match the object before it "
            "(that object, or this one, was changed, replaced or reordered)"
        )
    return problems


def _check_versions(store: Store, objects: list[tuple[int, str]]) -> list[str]:
    problems = []
    if store.supports_versions:
        versions: dict[str, list[Any]] = {}
        for version in store.list_versions(AUDIT_PREFIX):
            versions.setdefault(version.key, []).append(version)
        for key, found in sorted(versions.items()):
            if any(v.delete_marker for v in found):
                problems.append(f"{key}: deleted (a delete marker hides it)")
            elif len(found) > 1:
                problems.append(f"{key}: rewritten ({len(found)} versions)")
    if store.supports_object_lock:
        problems.extend(
            f"{key}: not under Object Lock retention"
            for _, key in objects
            if store.get_retention(key) is None
        )
    return problems


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def query_log(store: Store, sql: str) -> pa.Table:
    """Run the DuckDB query ``sql`` over the log's records as the table ``audit`` (``stores`` is
    a list of structs: ``UNNEST`` it). Only queries run, and they can read no file."""
    import duckdb
    import pyarrow as pa

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise InvalidInput(f"audit query failed: {err}") from err
    if any(s.type.name not in READ_ONLY_STATEMENTS for s in statements):
        raise InvalidInput("the audit log is read-only: only SELECT and EXPLAIN queries run")
    connection = duckdb.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="mira-audit-") as folder:
            lines = Path(folder) / "audit.jsonl"
            with lines.open("wb") as out:
                for _, key in log_objects(store):
                    out.write(store.read_bytes(key))
            if lines.stat().st_size:
                connection.execute(
                    "CREATE TABLE audit AS SELECT * FROM read_json(?, format='newline_delimited',"
                    " sample_size=-1)",
                    [str(lines)],
                )
            else:
                connection.execute(
                    "CREATE TABLE audit (seq BIGINT, operation VARCHAR, who VARCHAR,"
                    " started VARCHAR, outcome VARCHAR)"
                )
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        relation = connection.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as err:
        raise InvalidInput(f"audit query failed: {err}") from err
    finally:
        connection.close()

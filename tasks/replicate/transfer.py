"""Copying one object to a target: refused unless its bytes match the catalog, sent with
checksums the server verifies, resumed part by part, and verified on the remote afterwards."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Literal, TypeVar

from mira.errors import IntegrityError, TransientStoreError
from storage import Store
from storage.base import read_up_to
from storage.s3_upload import (
    MIN_PART_BYTES,
    ChecksumRefused,
    RemoteCopy,
    VerifiedUploader,
    checksum_of,
    composite_checksum,
)
from tasks.replicate.plan import PlannedObject
from tasks.replicate.progress import Progress, UploadRecord

log = logging.getLogger(__name__)
T = TypeVar("T")
Outcome = Literal["present", "sent", "resent", "refused"]


@dataclass(frozen=True)
class LinkOptions:
    """How to use the link: bandwidth cap, objects in flight, part size, retries."""

    max_mbps: float | None = None  # megabits per second; None: no cap
    concurrency: int = 4
    part_bytes: int = 16 * 1024 * 1024  # objects this large or larger go multipart
    attempts: int = 5  # per object, on transient failures and refused checksums
    backoff_s: float = 1.0  # doubled after each failed attempt, at most 60 s


class RateLimiter:
    """A token bucket shared by every sender of one run: at most ``max_mbps`` on average."""

    def __init__(self, max_mbps: float | None) -> None:
        self.rate = max_mbps * 1_000_000 / 8 if max_mbps else None  # bytes per second
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, size: int) -> None:
        if not self.rate:
            return
        with self._lock:
            start = max(self._next_free, time.monotonic())
            self._next_free = start + size / self.rate
        pause = start - time.monotonic()
        if pause > 0:
            time.sleep(pause)


@dataclass
class Counters:
    """What one run sent (attempts that failed included), thread-safe."""

    sent_bytes: int = 0
    refused_checksums: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, sent: int = 0, refused: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.sent_bytes += sent
            self.refused_checksums += refused
            self.retries += retries


@dataclass(frozen=True)
class ObjectResult:
    key: str
    outcome: Outcome
    detail: str = ""


class ObjectCopier:
    """Copies planned objects from the local research store to one target."""

    def __init__(
        self,
        local: Store,
        uploader: VerifiedUploader,
        progress: Progress,
        options: LinkOptions,
        limiter: RateLimiter,
        counters: Counters,
        listed: set[str] | None = None,
    ) -> None:
        self.local = local
        self.listed = listed  # keys the remote held when the batch began; None: unknown
        self._attempted: set[str] = set()
        self._lock = threading.Lock()
        self.uploader = uploader
        self.progress = progress
        self.options = options
        self.limiter = limiter
        self.counters = counters
        self.part_bytes = max(options.part_bytes, MIN_PART_BYTES)

    def copy(self, obj: PlannedObject) -> ObjectResult:
        """Copy ``obj`` unless the remote already holds it verified; retried with backoff."""
        try:
            return self._with_backoff(obj.key, lambda: self._copy_once(obj))
        except IntegrityError as err:
            if isinstance(err, ChecksumRefused):
                raise
            log.error("refused %s: %s", obj.key, err)
            return ObjectResult(obj.key, "refused", str(err))

    def copy_bytes(self, key: str, data: bytes) -> ObjectResult:
        """Copy a catalog part as read (its SHA-256 is that of ``data``)."""
        sha = hashlib.sha256(data).hexdigest()
        remote = self.uploader.remote_copy(key)
        checksum = checksum_of(bytes.fromhex(sha))
        if remote is not None and remote.size == len(data) and remote.checksum == checksum:
            return ObjectResult(key, "present")
        self._with_backoff(key, lambda: self._put(key, data, sha))
        return ObjectResult(key, "resent" if remote is not None else "sent")

    def _with_backoff(self, key: str, attempt: Callable[[], T]) -> T:
        delay = self.options.backoff_s
        for number in range(1, self.options.attempts + 1):
            try:
                return attempt()
            except (TransientStoreError, ChecksumRefused) as err:
                if isinstance(err, ChecksumRefused):
                    self.counters.add(refused=1)
                if number == self.options.attempts:
                    raise
                self.counters.add(retries=1)
                log.warning(
                    "%s (attempt %d/%d, again in %.1fs)", err, number, self.options.attempts, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")

    def _copy_once(self, obj: PlannedObject) -> ObjectResult:
        remote = self._remote_copy(obj.key)
        if obj.size < self.part_bytes and not (remote is not None and remote.part_bytes):
            data = self._read_checked(obj)  # small: read once, checked, then sent from memory
            if remote is not None and _matches(remote, obj, [hashlib.sha256(data).digest()]):
                return ObjectResult(obj.key, "present")
            if not self._put(obj.key, data, obj.sha256):
                self._verify(obj, [hashlib.sha256(data).digest()])
        else:
            record = self.progress.upload_record(obj.key)
            part_bytes = self.part_bytes
            if remote is not None and remote.part_bytes:
                part_bytes = remote.part_bytes
            elif record is not None and record.sha256 == obj.sha256:
                part_bytes = record.part_bytes
            with self._checked_source(obj, part_bytes) as (digests, source):
                if remote is not None and _matches(remote, obj, digests):
                    self.progress.drop_upload(obj.key)
                    return ObjectResult(obj.key, "present")
                if obj.size < self.part_bytes:
                    source.seek(0)
                    self._put(obj.key, source.read(), obj.sha256)
                else:
                    self._multipart(obj, digests, part_bytes, source)
            self._verify(obj, digests)
        if remote is not None:
            log.warning("remote copy of %s differed from the catalog: sent again", obj.key)
            return ObjectResult(obj.key, "resent", "the remote copy differed from the catalog")
        return ObjectResult(obj.key, "sent")

    def _remote_copy(self, key: str) -> RemoteCopy | None:
        """What the remote holds at ``key``: asked with a HEAD, unless the batch's listing showed
        no such key and this is the first attempt (a retry asks: its PUT may have landed)."""
        with self._lock:
            first = key not in self._attempted
            self._attempted.add(key)
        if first and self.listed is not None and key not in self.listed:
            return None
        return self.uploader.remote_copy(key)

    def _read_checked(self, obj: PlannedObject) -> bytes:
        """The whole (small) object, refused unless it matches the catalog's SHA-256."""
        data = self.local.read_bytes(obj.key)
        if len(data) != obj.size or hashlib.sha256(data).hexdigest() != obj.sha256:
            raise IntegrityError(
                f"{self.local.url_of(obj.key)} does not match its catalog SHA-256; not sent"
            )
        return data

    @contextlib.contextmanager
    def _checked_source(
        self, obj: PlannedObject, part_bytes: int
    ) -> Iterator[tuple[list[bytes], IO[bytes]]]:
        """The SHA-256 of each part of a large object and a seekable stream of its bytes,
        refused unless the whole matches the catalog (bytes it does not vouch for are never
        sent). A remote site store is read once, into a private spool file; a local file is
        read in place."""
        whole = hashlib.sha256()
        digests: list[bytes] = []
        size = 0
        with contextlib.ExitStack() as stack:
            stream: IO[bytes] = stack.enter_context(self.local.open_read(obj.key))
            spool = None if self.local.is_local else stack.enter_context(tempfile.TemporaryFile())
            while chunk := read_up_to(stream, part_bytes):
                whole.update(chunk)
                digests.append(hashlib.sha256(chunk).digest())
                size += len(chunk)
                if spool is not None:
                    spool.write(chunk)
            if whole.hexdigest() != obj.sha256 or size != obj.size:
                raise IntegrityError(
                    f"{self.local.url_of(obj.key)} does not match its catalog SHA-256; not sent"
                )
            yield digests or [hashlib.sha256(b"").digest()], spool or stream

    def _put(self, key: str, data: bytes, sha: str) -> bool:
        """One checked PUT; True when the server's reply names the checksum it stored (equal to
        the catalog's, else ``IntegrityError``), False when it named none."""
        self.limiter.take(len(data))
        self.counters.add(sent=len(data))
        stored = self.uploader.put(key, data, sha)
        if stored and stored != checksum_of(bytes.fromhex(sha)):
            raise IntegrityError(f"the remote stored another checksum for {key}")
        return bool(stored)

    def _multipart(
        self, obj: PlannedObject, digests: list[bytes], part_bytes: int, source: IO[bytes]
    ) -> None:
        """Send the parts the upload lacks, several at once (``concurrency``), recording each
        part the server confirms; then complete the upload and compare its composite checksum."""
        record = self._resumable_upload(obj, digests, part_bytes)
        upload_id = record.upload_id
        parts = dict(record.parts)
        pending = [n for n in range(1, len(digests) + 1) if n not in parts]
        lock = threading.Lock()

        def send(number: int) -> None:
            digest = digests[number - 1]
            with lock:  # one stream: reads take turns
                source.seek((number - 1) * part_bytes)
                body = read_up_to(source, part_bytes)
            # a local file may change under us; the private spool holds the bytes just checked
            if self.local.is_local and hashlib.sha256(body).digest() != digest:
                raise IntegrityError(f"{obj.key} changed while being sent; not sent")
            self.limiter.take(len(body))
            self.counters.add(sent=len(body))
            etag = self.uploader.put_part(obj.key, upload_id, number, body, digest)
            with lock:
                parts[number] = (etag, digest.hex())
                self.progress.save_upload(
                    UploadRecord(obj.key, obj.sha256, upload_id, part_bytes, dict(parts))
                )

        if pending:
            contexts = [contextvars.copy_context() for _ in pending]
            workers = min(len(pending), max(1, self.options.concurrency))
            try:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda c, n: c.run(send, n), contexts, pending))
            except IntegrityError as err:
                if not isinstance(err, ChecksumRefused):
                    self.uploader.abort_multipart(obj.key, upload_id)
                    self.progress.drop_upload(obj.key)
                raise
        listing = [(n, parts[n][0], digests[n - 1]) for n in range(1, len(digests) + 1)]
        composite = self.uploader.complete_multipart(
            obj.key, upload_id, listing, size=obj.size, sha256=obj.sha256
        )
        self.progress.drop_upload(obj.key)
        if composite and composite != composite_checksum(digests):
            raise IntegrityError(f"the remote's composite checksum of {obj.key} differs")

    def _resumable_upload(
        self, obj: PlannedObject, digests: list[bytes], part_bytes: int
    ) -> UploadRecord:
        """The recorded upload with the parts the server still holds intact, or a new one."""
        from mira.errors import ObjectNotFound

        record = self.progress.upload_record(obj.key)
        if record is not None and record.sha256 == obj.sha256 and record.part_bytes == part_bytes:
            try:
                held = self.uploader.uploaded_parts(obj.key, record.upload_id)
            except ObjectNotFound:
                held = None
            if held is not None:
                kept = {
                    n: (etag, sha)
                    for n, (etag, sha) in record.parts.items()
                    if n in held
                    and held[n].etag == etag
                    and n <= len(digests)
                    and digests[n - 1].hex() == sha
                }
                return UploadRecord(obj.key, obj.sha256, record.upload_id, part_bytes, kept)
        upload_id = self.uploader.start_multipart(obj.key, obj.sha256, part_bytes)
        fresh = UploadRecord(obj.key, obj.sha256, upload_id, part_bytes, {})
        self.progress.save_upload(fresh)
        return fresh

    def _verify(self, obj: PlannedObject, digests: list[bytes]) -> None:
        remote = self.uploader.remote_copy(obj.key)
        if remote is None or not _matches(remote, obj, digests):
            raise TransientStoreError(
                f"the remote copy of {obj.key} does not match the catalog after upload"
            )


def _matches(remote: RemoteCopy, obj: PlannedObject, digests: list[bytes]) -> bool:
    """Whether the remote's size and server-computed checksum agree with the catalog."""
    if remote.size != obj.size:
        return False
    if remote.checksum == checksum_of(bytes.fromhex(obj.sha256)):
        return True
    return bool(
        remote.part_bytes
        and remote.sha256 == obj.sha256
        and remote.checksum == composite_checksum(digests)
    )

"""The store contract every backend implements, and the small records it returns."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np
    from numpy.typing import NDArray

    ObjectData: TypeAlias = bytes | bytearray | memoryview | NDArray[np.uint8]  # one object's bytes

CHUNK_BYTES = 8 * 1024 * 1024
HASH_CHUNK_BYTES = 1024 * 1024  # fits a core's L2 cache: hashed while still there
LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
SpecialKind = Literal["symlink", "fifo", "socket", "device"]


@dataclass(frozen=True)
class S3Config:
    """How to reach an S3-compatible service; empty fields fall back to the AWS defaults."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)  # never in a message or log
    region: str | None = None
    cache_dir: str | None = None  # local folder for caches of the store's objects (catalog parts)
    ca_bundle: str | None = None  # PEM file of the CAs that sign the endpoint's TLS certificate
    allow_http: bool = False  # plain http to an endpoint that is not on this machine (loopback)
    sse: str | None = "AES256"  # server-side encryption asked on every write: AES256, aws:kms, None
    sse_kms_key_id: str | None = None  # the KMS key of aws:kms; None: the account's default key


@dataclass(frozen=True)
class ObjectInfo:
    """One object as the backend describes it. ``sha256`` is set when mira computed it."""

    key: str
    size: int
    etag: str | None = None
    version_id: str | None = None
    last_modified: datetime | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object, or a delete marker (which hides the versions below it)."""

    key: str
    version_id: str | None
    size: int = 0
    last_modified: datetime | None = None
    latest: bool = False  # what a read without a version id sees (a delete marker: nothing)
    delete_marker: bool = False


@dataclass(frozen=True)
class SpecialEntry:
    """An entry below a prefix that is not an object: a symbolic link (to a file or a folder),
    a FIFO, a socket or a device. Listed so that it can be reported; never followed or opened."""

    key: str
    kind: SpecialKind


@dataclass(frozen=True)
class Retention:
    """Object Lock retention of one object version (write-once until ``until``)."""

    mode: LockMode
    until: datetime


class HashingReader:
    """Wraps a binary stream and hashes (SHA-256) every byte read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def sha256_stream(stream: IO[bytes], chunk_bytes: int = HASH_CHUNK_BYTES) -> tuple[str, int]:
    """SHA-256 and size of everything left in ``stream``, read in bounded chunks.

    Streams with ``readinto`` (files, s3fs, BytesIO) are read into one reused buffer: a fresh
    buffer per chunk costs a page fault per 4 KiB, more than hashing the bytes.
    """
    digest = hashlib.sha256()
    size = 0
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size
    view = memoryview(bytearray(chunk_bytes))
    while count := readinto(view):
        digest.update(view[:count])
        size += count
    return digest.hexdigest(), size


def read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at the end of the stream (raw streams return short reads)."""
    first = stream.read(size)
    if len(first) == size or not first:
        return first
    pieces = [first]
    missing = size - len(first)
    while missing and (piece := stream.read(missing)):
        pieces.append(piece)
        missing -= len(piece)
    return b"".join(pieces)


def byte_view(data: ObjectData) -> memoryview:
    """The bytes of one object as a flat view, without a copy (an array must be contiguous)."""
    view = data.data if not isinstance(data, bytes | bytearray | memoryview) else memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def join_key(*parts: str) -> str:
    """Join key segments with single slashes, ignoring empty segments."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store(ABC):
    """An object store rooted at a URL: keys are ``/``-separated paths relative to that root.

    Local folders and S3 prefixes behave the same through this interface; only ``storage/``
    knows which one it is talking to.
    """

    url: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every backend's operations are reported to the audit trail's listener, if any."""
        super().__init_subclass__(**kwargs)
        from storage.observe import observe_methods

        observe_methods(cls)

    @property
    def cache_dir(self) -> Path | None:
        """A local folder for caches of this store's objects; None: the caller's default."""
        return None

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at ``prefix`` below this one."""

    def url_of(self, key: str) -> str:
        """The full URL of ``key``, for messages and manifests."""
        return f"{self.url.rstrip('/')}/{key.lstrip('/')}" if key else self.url

    @abstractmethod
    def open_read(
        self, key: str, version_id: str | None = None, *, block_size: int | None = None
    ) -> BinaryIO:
        """A seekable binary stream of the object (or of one version of it). Its read failures,
        mid-read included, are mira's errors (``TransientStoreError`` for a network blip).

        ``block_size`` is how much a remote stream fetches ahead at a time: large for reading
        through, small for a few scattered reads (a file's metadata); local files ignore it.
        """

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, size)`` range of the object, in the order given.

        Backends override this to fetch every range in one round (S3: concurrent range GETs)
        instead of reading through a stream's read-ahead, which fetches far more than asked for
        when the ranges are scattered.
        """
        with self.open_read(key) as stream:
            parts = []
            for offset, size in ranges:
                stream.seek(offset)
                parts.append(stream.read(size))
            return parts

    def read_bytes(self, key: str, version_id: str | None = None) -> bytes:
        """The whole object in memory; use ``open_read`` for large objects."""
        with self.open_read(key, version_id) as stream:
            return stream.read()

    def read_json(self, key: str) -> Any:
        """Parse the object as JSON."""
        return json.loads(self.read_bytes(key))

    @abstractmethod
    def write_stream(
        self,
        key: str,
        stream: IO[bytes],
        *,
        exclusive: bool = False,
        retention: Retention | None = None,
    ) -> ObjectInfo:
        """Publish the stream's bytes atomically at ``key`` and return the new object's info.

        Readers see the previous object or the complete new one, never a part. With
        ``exclusive`` the write fails with ``AlreadyExists`` if ``key`` exists. With
        ``retention`` the new version is locked (S3 Object Lock; read-only on local disk).
        The returned info carries the SHA-256 computed while streaming.
        """

    def write_bytes(
        self,
        key: str,
        data: bytes,
        *,
        exclusive: bool = False,
        retention: Retention | None = None,
    ) -> ObjectInfo:
        """Publish ``data`` atomically at ``key`` (see ``write_stream``)."""
        import io

        return self.write_stream(key, io.BytesIO(data), exclusive=exclusive, retention=retention)

    @abstractmethod
    def write_many(self, objects: Mapping[str, ObjectData]) -> None:
        """Publish many objects at once (the chunks of a pyramid), each atomically: a reader sees
        the previous object or the complete new one. Concurrent where the backend gains from it
        (S3); local files are written from the calling thread. No hashes are computed and local
        files are not fsynced: this is for output that a rerun can rebuild."""

    def write_json(self, key: str, value: Any, *, exclusive: bool = False) -> ObjectInfo:
        """Publish ``value`` as indented, key-sorted JSON."""
        text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
        return self.write_bytes(key, text.encode(), exclusive=exclusive)

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object below ``prefix``, recursively, sorted by key, with sizes. Links and
        special files are not objects: see ``list_special``."""

    def list_special(self, prefix: str = "") -> Iterator[SpecialEntry]:
        """The links and special files below ``prefix``, sorted by key, none of them followed.
        Only a local folder has them; an object store has none."""
        return iter(())

    def list_versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker below ``prefix``, sorted by key; for each key its
        versions oldest first, then its delete markers oldest first. A store without versions
        lists each object once, as its only version."""
        for obj in self.list(prefix):
            yield ObjectVersion(obj.key, obj.version_id, obj.size, obj.last_modified, latest=True)

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""

    @abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size, etag and version id of the object at ``key``."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Copy an object within this store; the destination is published atomically."""

    @abstractmethod
    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete an object (or one version); ``ObjectLocked`` if retention forbids it."""

    def remove_incomplete(self, prefix: str = "") -> int:
        """Remove what writes cut short (a killed process) left in the folder ``prefix``;
        returns how many. Only while nothing writes there. Backends whose unfinished writes
        leave nothing behind (a single PUT) have nothing to remove."""
        return 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object below ``prefix``; returns how many were deleted."""
        keys = [obj.key for obj in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def sha256(self, key: str, version_id: str | None = None) -> str:
        """SHA-256 of the object, streamed in bounded chunks."""
        with self.open_read(key, version_id) as stream:
            return sha256_stream(stream)[0]

    @property
    @abstractmethod
    def is_local(self) -> bool:
        """Whether the objects are files on this machine, so ``filesystem_path`` gives their
        paths to libraries that want a file (tifffile, DuckDB)."""

    def filesystem_path(self, key: str) -> str:
        """The file holding ``key`` on this machine; only where ``is_local``."""
        from mira.errors import InvalidInput

        raise InvalidInput(f"{self.url_of(key)} is not a file on this machine (a remote store)")

    @property
    @abstractmethod
    def supports_versions(self) -> bool:
        """Whether the store keeps object versions (``version_id`` in infos and reads)."""

    @property
    @abstractmethod
    def supports_object_lock(self) -> bool:
        """Whether writes can carry true WORM retention (an S3 bucket with Object Lock)."""

    @abstractmethod
    def set_retention(self, key: str, retention: Retention, version_id: str | None = None) -> None:
        """Lock an existing object version until ``retention.until``."""

    @abstractmethod
    def get_retention(self, key: str, version_id: str | None = None) -> Retention | None:
        """The retention of an object version, or None when it is not locked."""

    @abstractmethod
    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        """A zarr v3 store rooted at ``prefix``, writing straight to this backend; its failures
        are mira's errors, as every other operation's."""


def _observe_base_methods() -> None:
    """The base class's own implementations (``read_bytes``, ``delete_prefix``...) report too."""
    from storage.observe import observe_methods

    observe_methods(Store)


_observe_base_methods()

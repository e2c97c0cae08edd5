"""S3 (AWS, MinIO, Ceph, SeaweedFS...) as a store, through s3fs.

Single PUTs and completed multipart uploads are atomic for readers. Exclusive create is a
conditional write (``If-None-Match: *``); Object Lock retention travels with the write.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import io
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import fsspec.asyn
import s3fs

from mira.errors import AccessDenied, InvalidInput, ObjectLocked, ObjectNotFound
from storage.base import (
    ObjectInfo,
    ObjectVersion,
    Retention,
    S3Config,
    Store,
    byte_view,
    join_key,
    read_up_to,
)
from storage.errors import TranslatedReader, retry_async, translate_errors, with_retries
from storage.security import check_endpoint, client_tls_args, sse_request_args

if TYPE_CHECKING:
    from storage.base import ObjectData

PART_BYTES = 16 * 1024 * 1024
MAX_PUT_BYTES = 5 * 1024**3  # S3's limit for one PutObject
READ_BLOCK_BYTES = 8 * 1024 * 1024
PUTS_IN_FLIGHT = 32  # write_many's PUTs under way at once; botocore's pool also bounds them


@functools.lru_cache(maxsize=8)
def _filesystem(config: S3Config, asynchronous: bool = False) -> s3fs.S3FileSystem:
    client_kwargs: dict[str, Any] = {}
    if config.endpoint_url:
        client_kwargs["endpoint_url"] = config.endpoint_url
    if config.region:
        client_kwargs["region_name"] = config.region
    client_kwargs.update(client_tls_args(config))
    fs = s3fs.S3FileSystem(
        key=config.access_key_id,
        secret=config.secret_access_key,
        client_kwargs=client_kwargs,
        s3_additional_kwargs=sse_request_args(config),
        version_aware=not asynchronous,
        use_listings_cache=False,
        # One attempt per request in botocore and in s3fs: storage.errors retries a transient
        # failure of one request, Prefect a whole task in a longer outage. Retrying in every
        # layer multiplies the attempts (botocore's ``max_attempts`` counts retries: 1 is two
        # attempts) and hides an outage for minutes.
        config_kwargs={
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": 10,
        },
        asynchronous=asynchronous,
        skip_instance_cache=asynchronous,
    )
    fs.retries = 1
    return fs


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into bucket and prefix (no surrounding slashes)."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidInput(f"S3 URL without a bucket: {url!r}")
    return bucket, prefix.strip("/")


class S3Store(Store):
    """Objects below ``s3://bucket/prefix``."""

    def __init__(self, url: str, config: S3Config) -> None:
        check_endpoint(config)
        self.bucket, self.prefix = parse_s3_url(url)
        self.config = config
        self.url = f"s3://{join_key(self.bucket, self.prefix)}"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.config.cache_dir) if self.config.cache_dir else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (S3Store, (self.url, self.config))

    @property
    def fs(self) -> s3fs.S3FileSystem:
        return _filesystem(self.config)

    def child(self, prefix: str) -> S3Store:
        return S3Store(f"s3://{join_key(self.bucket, self.prefix, prefix)}", self.config)

    def _key(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise InvalidInput(f"invalid key {key!r} in {self.url}")
        return join_key(self.prefix, *parts)

    def _call(self, method: str, key: str, **kwargs: Any) -> Any:
        @with_retries
        def call() -> Any:
            with translate_errors(self.url_of(key)):
                return self.fs.call_s3(method, Bucket=self.bucket, **kwargs)

        return call()

    @property
    def is_local(self) -> bool:
        return False

    def open_read(
        self, key: str, version_id: str | None = None, *, block_size: int | None = None
    ) -> BinaryIO:
        path = f"{self.bucket}/{self._key(key)}"

        @with_retries
        def open_file() -> IO[bytes]:
            with translate_errors(self.url_of(key)):
                handle: IO[bytes] = self.fs.open(
                    path,
                    "rb",
                    version_id=version_id,
                    block_size=block_size or READ_BLOCK_BYTES,
                    cache_type="readahead",
                )
                return handle

        return TranslatedReader(open_file(), self.url_of(key), retry=True)  # type: ignore[return-value]

    def read_bytes(self, key: str, version_id: str | None = None) -> bytes:
        """The whole object in one GET, so one version: a read through ``open_read`` fetches it in
        blocks, and fails (s3fs ``FileExpired``) when the object is replaced between two. One
        GET also for large objects: s3fs would first HEAD the key without the version (which
        fails under a delete marker), then fetch ranges concurrently."""
        path = f"{self.bucket}/{self._key(key)}"

        @with_retries
        def fetch() -> bytes:
            with translate_errors(self.url_of(key)):
                return bytes(self.fs.cat_file(path, version_id=version_id, max_concurrency=1))

        return fetch()

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        wanted = [(offset, size) for offset, size in ranges if size > 0]  # S3 has no empty range
        if not wanted:
            return [b"" for _ in ranges]
        path = f"{self.bucket}/{self._key(key)}"

        @with_retries
        def fetch() -> list[bytes]:
            with translate_errors(self.url_of(key)):
                parts = self.fs.cat_ranges(
                    [path] * len(wanted),
                    [offset for offset, _ in wanted],
                    [offset + size for offset, size in wanted],
                    on_error="raise",
                )
                return [bytes(part) for part in parts]

        fetched = iter(fetch())
        return [next(fetched) if size > 0 else b"" for _, size in ranges]

    def write_stream(
        self,
        key: str,
        stream: IO[bytes],
        *,
        exclusive: bool = False,
        retention: Retention | None = None,
    ) -> ObjectInfo:
        digest = hashlib.sha256()
        first = read_up_to(stream, PART_BYTES)
        digest.update(first)
        conditions = _write_conditions(exclusive, retention)
        if len(first) < PART_BYTES:
            reply = self._call("put_object", key, Key=self._key(key), Body=first, **conditions)
            size = len(first)
        else:
            reply, size = self._multipart_upload(key, first, stream, digest, conditions)
        return ObjectInfo(
            key=key,
            size=size,
            etag=reply.get("ETag"),
            version_id=reply.get("VersionId"),
            last_modified=datetime.now(UTC),
            sha256=digest.hexdigest(),
        )

    def write_many(self, objects: Mapping[str, ObjectData]) -> None:
        """One PUT per object, many in flight, each retried on its own; the first failure is
        raised once every PUT has finished."""
        puts: builtins.list[tuple[str, str, bytes | bytearray]] = []
        for key, data in objects.items():
            body = _body(data)
            if len(body) > MAX_PUT_BYTES:
                self.write_stream(key, io.BytesIO(body))
            else:
                puts.append((self._key(key), self.url_of(key), body))

        async def put(
            key: str, url: str, body: bytes | bytearray, slots: asyncio.Semaphore
        ) -> None:
            async with slots:
                await retry_async(
                    lambda: self.fs._call_s3("put_object", Bucket=self.bucket, Key=key, Body=body),
                    url,
                )

        async def put_all() -> None:
            slots = asyncio.Semaphore(PUTS_IN_FLIGHT)
            done = await asyncio.gather(*(put(*p, slots) for p in puts), return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome

        if puts:
            fsspec.asyn.sync(self.fs.loop, put_all)

    def _multipart_upload(
        self, key: str, first: bytes, stream: IO[bytes], digest: Any, conditions: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """Upload part by part (one part in memory at a time); the object appears on completion."""
        lock_args = {k: v for k, v in conditions.items() if k.startswith("ObjectLock")}
        upload = self._call("create_multipart_upload", key, Key=self._key(key), **lock_args)
        upload_id = upload["UploadId"]
        parts: builtins.list[dict[str, Any]] = []
        size = 0
        try:
            chunk = first
            while chunk:
                number = len(parts) + 1
                reply = self._call(
                    "upload_part",
                    key,
                    Key=self._key(key),
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": reply["ETag"]})
                size += len(chunk)
                chunk = read_up_to(stream, PART_BYTES)
                digest.update(chunk)
            completion = {"IfNoneMatch": "*"} if "IfNoneMatch" in conditions else {}
            done = self._call(
                "complete_multipart_upload",
                key,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **completion,
            )
        except BaseException:
            self._call("abort_multipart_upload", key, Key=self._key(key), UploadId=upload_id)
            raise
        return done, size

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = join_key(self.prefix)
        wanted = self._key(prefix) if prefix else root
        paginator_prefix = wanted if not root or wanted != root else root + "/"
        found = self._list_objects(paginator_prefix)
        strip = len(root) + 1 if root else 0
        for entry in sorted(found, key=lambda e: e["Key"]):
            if entry["Key"].endswith("/"):
                continue  # a folder marker (consoles create them), which no key can address
            yield ObjectInfo(
                key=entry["Key"][strip:],
                size=int(entry["Size"]),
                etag=entry.get("ETag"),
                last_modified=entry.get("LastModified"),
            )

    def _list_objects(self, prefix: str) -> builtins.list[dict[str, Any]]:
        entries: builtins.list[dict[str, Any]] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", prefix, Prefix=prefix, **extra)
            entries.extend(page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return entries

    def list_versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        """S3 lists each key's versions and delete markers newest first, apart; their order, not
        ``LastModified`` (one second for several writes), tells which version came first."""
        root = join_key(self.prefix)
        wanted = self._key(prefix) if prefix else root
        wanted = wanted if not root or wanted != root else root + "/"
        found: dict[str, tuple[builtins.list[ObjectVersion], builtins.list[ObjectVersion]]] = {}
        strip = len(root) + 1 if root else 0
        marker: dict[str, str] = {}
        while True:
            page = self._call("list_object_versions", prefix, Prefix=wanted, **marker)
            for kind, is_marker in (("Versions", False), ("DeleteMarkers", True)):
                for entry in page.get(kind, []):
                    objects, markers = found.setdefault(entry["Key"][strip:], ([], []))
                    (markers if is_marker else objects).append(
                        ObjectVersion(
                            key=entry["Key"][strip:],
                            version_id=entry.get("VersionId"),
                            size=int(entry.get("Size", 0)),
                            last_modified=entry.get("LastModified"),
                            latest=bool(entry.get("IsLatest")),
                            delete_marker=is_marker,
                        )
                    )
            if not page.get("IsTruncated"):
                break
            marker = {"KeyMarker": page["NextKeyMarker"]}
            if page.get("NextVersionIdMarker"):
                marker["VersionIdMarker"] = page["NextVersionIdMarker"]
        for key in sorted(found):
            versions, markers = found[key]
            yield from reversed(versions)
            yield from reversed(markers)

    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except ObjectNotFound:
            return False
        return True

    def info(self, key: str, version_id: str | None = None) -> ObjectInfo:
        extra = {"VersionId": version_id} if version_id else {}
        head = self._call("head_object", key, Key=self._key(key), **extra)
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            etag=head.get("ETag"),
            version_id=head.get("VersionId"),
            last_modified=head.get("LastModified"),
        )

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        size = self.info(src_key).size
        if size >= 5 * 1024**3:
            with self.open_read(src_key) as src:
                return self.write_stream(dst_key, src)
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        reply = self._call("copy_object", dst_key, Key=self._key(dst_key), CopySource=source)
        return ObjectInfo(key=dst_key, size=size, version_id=reply.get("VersionId"))

    def delete(self, key: str, version_id: str | None = None) -> None:
        if not version_id:
            self.info(key)  # S3 deletes are silent about missing keys; mira is not
        extra = {"VersionId": version_id} if version_id else {}
        try:
            self._call("delete_object", key, Key=self._key(key), **extra)
        except AccessDenied as err:
            if version_id and self.get_retention(key, version_id) is not None:
                raise ObjectLocked(
                    f"object version is under retention: {self.url_of(key)}"
                ) from err
            raise

    @functools.cached_property
    def supports_versions(self) -> bool:
        try:
            reply = self._call("get_bucket_versioning", "")
        except (ObjectNotFound, PermissionError):
            return False
        return bool(reply.get("Status") == "Enabled")

    @functools.cached_property
    def supports_object_lock(self) -> bool:
        try:
            reply = self._call("get_object_lock_configuration", "")
        except (ObjectNotFound, PermissionError):
            return False
        return bool(reply.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def set_retention(self, key: str, retention: Retention, version_id: str | None = None) -> None:
        extra = {"VersionId": version_id} if version_id else {}
        self._call(
            "put_object_retention",
            key,
            Key=self._key(key),
            Retention={"Mode": retention.mode, "RetainUntilDate": retention.until},
            **extra,
        )

    def server_side_encryption(self, key: str) -> str | None:
        """The encryption the server applied to the object (AES256, aws:kms), None for none."""
        head = self._call("head_object", key, Key=self._key(key))
        return head.get("ServerSideEncryption") or None

    def get_retention(self, key: str, version_id: str | None = None) -> Retention | None:
        extra = {"VersionId": version_id} if version_id else {}
        head = self._call("head_object", key, Key=self._key(key), **extra)
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode or not until:
            return None
        return Retention(mode=mode, until=until.astimezone(UTC))

    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        from storage.zarr_adapter import TranslatingZarrStore

        fs = _filesystem(self.config, asynchronous=True)
        store = FsspecStore(fs, path=f"{self.bucket}/{self._key(prefix)}", read_only=read_only)
        return TranslatingZarrStore(store, self.url_of(prefix))

    def delete_prefix(self, prefix: str) -> int:
        keys = [obj.key for obj in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self._call("delete_objects", prefix, Delete={"Objects": batch, "Quiet": True})
        return len(keys)


def _body(data: ObjectData) -> bytes | bytearray:
    """A PUT body: botocore takes bytes, not a buffer (an array is copied once, as zarr does)."""
    return data if isinstance(data, bytes | bytearray) else byte_view(data).tobytes()


def _write_conditions(exclusive: bool, retention: Retention | None) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if exclusive:
        conditions["IfNoneMatch"] = "*"
    if retention is not None:
        conditions["ObjectLockMode"] = retention.mode
        conditions["ObjectLockRetainUntilDate"] = retention.until
    return conditions

"""Verified uploads to an S3 store: every PUT carries a SHA-256 the server checks.

Replication copies objects whose SHA-256 the catalog records, so each request carries that
digest (``x-amz-checksum-sha256``): a single PUT the whole object's, a multipart upload each
part's. The server recomputes the digest of what it received and refuses the request when they
differ (SeaweedFS 4 and AWS both do: ``tests/test_replicate_storage.py`` proves it), so a byte
flipped on the way never becomes an object. After upload, ``remote_copy`` reads back what the
server stored (size, its SHA-256 or, for multipart objects, the composite digest of the parts'
SHA-256) to compare with the catalog without downloading the object.

A multipart upload's parts survive the uploader: ``uploaded_parts`` lists those the server
holds, so a killed upload resumes with the parts it lacks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mira.errors import ConfigError, IntegrityError, ObjectNotFound
from storage.base import Store
from storage.errors import _error_code, translate_errors, with_retries

SHA256_METADATA = "mira-sha256"  # the object's full SHA-256 (hex), beside the server's digests
PART_BYTES_METADATA = "mira-part-bytes"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
CHECKSUM_REFUSALS = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidRequest"}
)


class ChecksumRefused(IntegrityError):
    """The server refused a request whose body did not match the SHA-256 it carried: the bytes
    were damaged on the way. Sending them again is the remedy."""


@dataclass(frozen=True)
class RemoteCopy:
    """An object as the remote server stored it."""

    size: int
    checksum: str | None  # base64 SHA-256, or "<base64 composite>-<parts>" for multipart
    sha256: str | None  # the full SHA-256 mira sent as metadata (hex)
    part_bytes: int  # part size of a multipart object; 0 for a single PUT


@dataclass(frozen=True)
class UploadedPart:
    """One part of an unfinished multipart upload, as the server lists it."""

    number: int
    size: int
    etag: str


def _report_write(store: Store, key: str, size: int, sha256: str) -> None:
    """Tell the audit trail's listener (``storage.observe``, where present) of one object
    written: these requests bypass the ``Store`` methods that report themselves."""
    try:
        from storage import observe
    except ImportError:  # a tree without the audit trail
        return
    listener = observe._listener.get()
    if listener is not None:
        listener.saw(observe.Touch("write", store.url, key, 1, size, sha256))


def checksum_of(digest: bytes) -> str:
    """The ``x-amz-checksum-sha256`` form of a SHA-256 digest (base64)."""
    return base64.b64encode(digest).decode()


def composite_checksum(part_digests: Sequence[bytes]) -> str:
    """The checksum S3 reports for a multipart object: SHA-256 of the parts' digests, ``-N``."""
    return f"{checksum_of(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


class VerifiedUploader:
    """Checked PUTs, multipart uploads and HEADs on one S3 store (a replication target)."""

    def __init__(self, store: Store) -> None:
        from storage.s3 import S3Store

        if not isinstance(store, S3Store):
            raise ConfigError(f"a replication target must be an s3:// URL, not {store.url}")
        self.store = store

    def _request(self, method: str, key: str, **kwargs: Any) -> Any:
        """One S3 request (retried on transient failures); a refused checksum raises
        ``ChecksumRefused``, an unknown upload ``ObjectNotFound``."""
        store = self.store
        url = store.url_of(key)

        @with_retries
        def call() -> Any:
            try:
                with translate_errors(url):
                    return store.fs.call_s3(
                        method, Bucket=store.bucket, Key=store._key(key), **kwargs
                    )
            except Exception as err:
                code = _error_code(err)
                if code in CHECKSUM_REFUSALS or "did not match" in str(err):
                    raise ChecksumRefused(f"the server refused damaged bytes for {url}") from err
                if code == "NoSuchUpload":
                    raise ObjectNotFound(f"no such multipart upload for {url}") from err
                raise

        return call()

    def remote_copy(self, key: str) -> RemoteCopy | None:
        """What the remote holds at ``key``, or None when nothing."""
        try:
            head = self._request("head_object", key, ChecksumMode="ENABLED")
        except ObjectNotFound:
            return None
        metadata = head.get("Metadata") or {}
        return RemoteCopy(
            size=int(head["ContentLength"]),
            checksum=head.get("ChecksumSHA256"),
            sha256=metadata.get(SHA256_METADATA),
            part_bytes=int(metadata.get(PART_BYTES_METADATA, 0) or 0),
        )

    def put(self, key: str, body: bytes, sha256: str) -> str:
        """One PUT of ``body`` carrying its SHA-256; returns the checksum the server stored."""
        digest = bytes.fromhex(sha256)
        reply = self._request(
            "put_object",
            key,
            Body=body,
            ChecksumSHA256=checksum_of(digest),
            Metadata={SHA256_METADATA: sha256},
        )
        _report_write(self.store, key, len(body), sha256)
        return str(reply.get("ChecksumSHA256") or "")

    def start_multipart(self, key: str, sha256: str, part_bytes: int) -> str:
        """Open a multipart upload whose parts carry SHA-256 checksums; returns its id."""
        reply = self._request(
            "create_multipart_upload",
            key,
            ChecksumAlgorithm="SHA256",
            Metadata={SHA256_METADATA: sha256, PART_BYTES_METADATA: str(part_bytes)},
        )
        return str(reply["UploadId"])

    def uploaded_parts(self, key: str, upload_id: str) -> dict[int, UploadedPart]:
        """The parts the server holds for an unfinished upload; ``ObjectNotFound`` when the
        upload is gone (completed, aborted, or expired by the server)."""
        found: dict[int, UploadedPart] = {}
        marker: dict[str, Any] = {}
        while True:
            page = self._request("list_parts", key, UploadId=upload_id, **marker)
            for part in page.get("Parts", []):
                number = int(part["PartNumber"])
                found[number] = UploadedPart(number, int(part["Size"]), str(part["ETag"]))
            if not page.get("IsTruncated"):
                return found
            marker = {"PartNumberMarker": page["NextPartNumberMarker"]}

    def put_part(self, key: str, upload_id: str, number: int, body: bytes, digest: bytes) -> str:
        """Upload part ``number`` carrying its SHA-256; returns its ETag."""
        reply = self._request(
            "upload_part",
            key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumSHA256=checksum_of(digest),
        )
        return str(reply["ETag"])

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str, bytes]],
        *,
        size: int,
        sha256: str,
    ) -> str:
        """Complete the upload from ``(number, etag, digest)`` of every part (``size`` bytes in
        all, ``sha256`` the whole object's); returns the composite checksum the server computed."""
        listed = [
            {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum_of(digest)}
            for number, etag, digest in parts
        ]
        reply = self._request(
            "complete_multipart_upload",
            key,
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )
        _report_write(self.store, key, size, sha256)
        return str(reply.get("ChecksumSHA256") or "")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts (no error when it is already gone)."""
        with contextlib.suppress(ObjectNotFound):
            self._request("abort_multipart_upload", key, UploadId=upload_id)

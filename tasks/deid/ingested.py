"""Reading drop-zone objects after ingest: only the bytes that ingest accepted.

Ingest records each accepted object's SHA-256 (and, on a versioned store, may record the version
it read). An object replaced or edited in the drop zone since then, even with the same size,
could be another patient's file published under the first one's pseudonym, so every read after
ingest is checked: a newer version than the one recorded, or bytes whose SHA-256 differs from
the recorded one, raise :class:`~mira.errors.IntegrityError`, which the stage turns into a
quarantine with the reason ``changed-after-ingest``. The bytes checked are the bytes used: small
objects are read whole in one GET, slides are copied once to a local file while hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from mira.errors import IntegrityError
from storage import Store

CHANGED_AFTER_INGEST = "changed-after-ingest"
_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class IngestRecord:
    """What ingest recorded of one object: its SHA-256 and, where recorded, its version.
    An empty ``sha256`` (``mira deid`` on a folder, no ingest) checks nothing."""

    sha256: str
    version_id: str | None = None


def read_ingested(store: Store, key: str, record: IngestRecord) -> bytes:
    """The whole object, checked to be what ingest accepted."""
    _check_version(store, key, record)
    data = store.read_bytes(key, record.version_id)
    _check_sha256(record, hashlib.sha256(data).hexdigest())
    return data


@contextlib.contextmanager
def ingested_copy(store: Store, key: str, record: IngestRecord) -> Iterator[IO[bytes]]:
    """A local temporary copy of the object (for slides, read by offsets), checked to be what
    ingest accepted before it is handed out."""
    _check_version(store, key, record)
    with tempfile.NamedTemporaryFile(prefix="mira-ingested-") as copy:
        digest = hashlib.sha256()
        with store.open_read(key, record.version_id) as stream:
            while chunk := stream.read(_COPY_CHUNK):
                digest.update(chunk)
                copy.write(chunk)
        _check_sha256(record, digest.hexdigest())
        copy.seek(0)
        yield copy


def _check_version(store: Store, key: str, record: IngestRecord) -> None:
    if not record.version_id:
        return
    current = store.info(key).version_id
    if current != record.version_id:
        raise IntegrityError(
            f"the object was replaced after ingest (version "
            f"{record.version_id} recorded, {current} now)"
        )


def _check_sha256(record: IngestRecord, found: str) -> None:
    if record.sha256 and found != record.sha256:
        raise IntegrityError(f"SHA-256 {found} differs from {record.sha256} recorded at ingest")

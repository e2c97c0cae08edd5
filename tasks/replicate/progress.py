"""Durable replication progress and claims, kept on the local research store.

``replication/<target>/`` holds, per target:

- ``claims/<batch>/<generation>.json``: which replicator holds a batch. A claim is taken by
  exclusive create (as ``tasks/ingest/runs.py`` claims a stage), so two replicators racing for a
  batch cannot both win; it is a lease, renewed while the holder works, and stale once it expires
  or its holder's process on this host has died, so a killed replicator never blocks a batch.
- ``uploads/<id>.json``: an unfinished multipart upload (its id, part size and the parts the
  server confirmed), so a resumed replication sends only the missing parts.
- ``batches/<batch>.json``: a batch fully copied and verified, with its catalog parts' SHA-256
  (a rerun that changed a part makes the batch due again) and its transfer figures.

Nothing under ``replication/`` is listed by the catalog, so none of it is ever replicated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mira.errors import AlreadyExists, InvalidInput, ObjectNotFound
from storage import Store, join_key
from tasks import layout

LEASE_SECONDS = 600.0
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_target_name(name: str) -> str:
    """A target name is one key segment of letters, digits, ``.``, ``_`` and ``-``."""
    if not _TARGET_NAME.match(name):
        raise InvalidInput(f"invalid replication target name {name!r}: use letters, digits, . _ -")
    return name


def target_folder(target: str) -> str:
    return join_key(layout.REPLICATION, check_target_name(target))


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BatchClaim:
    """One replicator's lease on a batch for one target."""

    batch: str
    generation: int
    holder: str
    host: str
    pid: int
    claimed_at: str
    expires_at: str
    released: bool = False

    def is_stale(self, at: datetime) -> bool:
        """Whether another replicator may take the batch: released, expired, or held by a
        process of this host that no longer runs."""
        if self.released or datetime.fromisoformat(self.expires_at) <= at:
            return True
        return self.host == socket.gethostname() and not _process_alive(self.pid)


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool
    claim: BatchClaim


def new_holder() -> str:
    """A replicator's identity: host, process and a random part (threads of one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Progress:
    """Claims, multipart records and done records of one target on the local research store."""

    def __init__(self, local: Store, target: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.local = local
        self.folder = target_folder(target)
        self.lease = timedelta(seconds=lease_seconds)

    def _claim_folder(self, batch: str) -> str:
        return join_key(self.folder, "claims", batch)

    def latest_claim(self, batch: str) -> BatchClaim | None:
        folder = self._claim_folder(batch)
        numbers = [
            int(stem)
            for info in self.local.list(f"{folder}/")
            if (stem := info.key.rsplit("/", 1)[-1].removesuffix(".json")).isdigit()
        ]
        if not numbers:
            return None
        try:
            return BatchClaim(**self.local.read_json(join_key(folder, f"{max(numbers)}.json")))
        except ObjectNotFound:
            return None

    def claim(self, batch: str, holder: str) -> ClaimResult:
        """Take the batch unless a live replicator holds it."""
        at = now_utc()
        latest = self.latest_claim(batch)
        if latest is not None and latest.holder != holder and not latest.is_stale(at):
            return ClaimResult(False, latest)
        claim = BatchClaim(
            batch=batch,
            generation=(latest.generation if latest else 0) + 1,
            holder=holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            claimed_at=at.isoformat(),
            expires_at=(at + self.lease).isoformat(),
        )
        key = join_key(self._claim_folder(batch), f"{claim.generation}.json")
        try:
            self.local.write_json(key, asdict(claim), exclusive=True)
        except AlreadyExists:  # another replicator won this generation
            winner = BatchClaim(**self.local.read_json(key))
            return ClaimResult(winner.holder == holder, winner)
        return ClaimResult(True, claim)

    def renew(self, claim: BatchClaim) -> BatchClaim:
        """Extend the holder's lease (only the holder rewrites its own generation)."""
        renewed = replace(claim, expires_at=(now_utc() + self.lease).isoformat())
        self._write_claim(renewed)
        return renewed

    def release(self, claim: BatchClaim) -> None:
        self._write_claim(replace(claim, released=True))

    def _write_claim(self, claim: BatchClaim) -> None:
        key = join_key(self._claim_folder(claim.batch), f"{claim.generation}.json")
        self.local.write_json(key, asdict(claim))

    def _upload_key(self, key: str) -> str:
        return join_key(
            self.folder, "uploads", f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        )

    def upload_record(self, key: str) -> UploadRecord | None:
        try:
            raw = self.local.read_json(self._upload_key(key))
        except ObjectNotFound:
            return None
        raw["parts"] = {int(n): tuple(v) for n, v in raw["parts"].items()}
        return UploadRecord(**raw)

    def save_upload(self, record: UploadRecord) -> None:
        value = asdict(record)
        value["parts"] = {str(n): list(v) for n, v in record.parts.items()}
        self.local.write_json(self._upload_key(record.key), value)

    def drop_upload(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            self.local.delete(self._upload_key(key))

    def done_key(self, batch: str) -> str:
        return join_key(self.folder, "batches", f"{batch}.json")

    def done_record(self, batch: str) -> BatchDone | None:
        try:
            return BatchDone(**self.local.read_json(self.done_key(batch)))
        except ObjectNotFound:
            return None

    def done_records(self) -> list[BatchDone]:
        prefix = join_key(self.folder, "batches") + "/"
        return [BatchDone(**self.local.read_json(i.key)) for i in self.local.list(prefix)]

    def save_done(self, record: BatchDone) -> None:
        self.local.write_json(self.done_key(record.batch), asdict(record))


@dataclass(frozen=True)
class UploadRecord:
    """An unfinished multipart upload: which object, which upload, which parts the server took
    (part number -> (ETag, SHA-256 hex))."""

    key: str
    sha256: str
    upload_id: str
    part_bytes: int
    parts: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchDone:
    """A batch copied and verified on one target."""

    batch: str
    published_at: str
    objects: int
    bytes: int
    sent_bytes: int
    seconds: float
    finished_at: str
    catalog_sha256: dict[str, str]
    resent: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

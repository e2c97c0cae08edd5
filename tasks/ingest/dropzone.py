"""The gateway drop zone: which batches are completely uploaded, and what each one holds.

A batch is the folder ``<dropzone>/<batch>/``. Its upload is complete when it holds a ``_READY``
marker or a ``manifest.json`` naming every file with its SHA-256; a batch with neither, or whose
manifest names a file that is not there yet, is still uploading and is never taken. Links and
special files in a batch are part of it (to be refused by name), but never a marker or manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mira.errors import InvalidInput, ObjectNotFound
from storage import ObjectInfo, SpecialEntry, Store, join_key
from tasks import layout

log = logging.getLogger(__name__)

READY_MARKER = "_READY"
MANIFEST_NAME = "manifest.json"
CONTROL_FILES = frozenset({READY_MARKER, MANIFEST_NAME})
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
PATIENT_ID_MAX_CHARS = 64  # DICOM's PatientID is an LO: at most 64 characters, no backslash

MarkerKind = Literal["ready", "manifest"]


@dataclass(frozen=True)
class BatchRef:
    """A batch whose upload is complete. ``file_count`` excludes the marker and the manifest."""

    name: str
    prefix: str  # gateway key prefix of the batch, without trailing slash
    marker: MarkerKind  # "manifest" when a manifest.json is present (with or without _READY)
    manifest_sha256: str | None
    file_count: int


@dataclass(frozen=True)
class WaitingBatch:
    """A batch that is not ready yet, and why (no marker, files missing, bad manifest)."""

    name: str
    prefix: str
    reason: str


@dataclass(frozen=True)
class DropZoneScan:
    """Every batch of the drop zone, ready or waiting, sorted by name."""

    ready: tuple[BatchRef, ...]
    waiting: tuple[WaitingBatch, ...]


@dataclass(frozen=True)
class ManifestEntry:
    """One file the uploader promises: its path below the batch, SHA-256 and size, and for a
    slide, optionally, the hospital's ID of its patient (what that patient's DICOM files carry
    in PatientID; PHI, so it stays on the gateway and is pseudonymised like PatientID)."""

    path: str
    sha256: str
    size: int
    patient_id: str | None = None


@dataclass(frozen=True)
class BatchContents:
    """A ready batch's data objects (sorted by key), its links and special files (never read),
    and, when it has one, its manifest."""

    ref: BatchRef
    objects: tuple[ObjectInfo, ...]
    manifest: Mapping[str, ManifestEntry] | None
    special: tuple[SpecialEntry, ...] = ()

    def relative_path(self, key: str) -> str:
        """The object's path below the batch folder."""
        return key[len(self.ref.prefix) + 1 :]


def scan_dropzone(gateway: Store, dropzone: str = layout.DROPZONE) -> DropZoneScan:
    """Sort every batch of the drop zone into ready and waiting, from one listing."""
    root = join_key(dropzone)
    by_batch: dict[str, list[ObjectInfo]] = {}
    for info in gateway.list(root):
        if not info.key.startswith(f"{root}/"):
            continue  # a sibling prefix such as "dropzone2/" on S3
        name, _, rest = info.key[len(root) + 1 :].partition("/")
        if rest:
            by_batch.setdefault(name, []).append(info)
        else:
            log.debug("ignoring %s: objects must sit in a batch folder", info.key)
    special: dict[str, list[SpecialEntry]] = {}
    for entry in gateway.list_special(root):
        name, _, rest = entry.key.removeprefix(f"{root}/").partition("/")
        if rest and entry.key.startswith(f"{root}/"):
            special.setdefault(name, []).append(entry)
    ready: list[BatchRef] = []
    waiting: list[WaitingBatch] = []
    for name in sorted(by_batch):
        prefix = f"{root}/{name}"
        state = examine_batch(gateway, name, prefix, by_batch[name], special.get(name, ()))
        if isinstance(state, WaitingBatch):
            waiting.append(state)
        else:
            ready.append(state.ref)
    return DropZoneScan(tuple(ready), tuple(waiting))


def find_ready_batches(gateway: Store, dropzone: str = layout.DROPZONE) -> list[BatchRef]:
    """The batches whose upload is complete; waiting ones are logged, never returned."""
    scan = scan_dropzone(gateway, dropzone)
    for batch in scan.waiting:
        log.info("batch %s is not ready: %s", batch.name, batch.reason)
    return list(scan.ready)


def load_batch(gateway: Store, batch: str, dropzone: str = layout.DROPZONE) -> BatchContents:
    """The contents of one ready batch; ``InvalidInput`` when it is still uploading."""
    check_batch_name(batch)
    prefix = join_key(dropzone, batch)
    objects = list_batch(gateway, prefix)
    if not objects:
        raise ObjectNotFound(f"no batch {batch!r} in {gateway.url_of(join_key(dropzone))}")
    state = examine_batch(gateway, batch, prefix, objects, list_batch_special(gateway, prefix))
    if isinstance(state, WaitingBatch):
        raise InvalidInput(f"batch {batch!r} is not ready: {state.reason}")
    return state


def list_batch(gateway: Store, prefix: str) -> list[ObjectInfo]:
    """Every object below the batch folder ``prefix`` (control files included), sorted by key."""
    return [info for info in gateway.list(prefix) if info.key.startswith(f"{prefix}/")]


def list_batch_special(gateway: Store, prefix: str) -> list[SpecialEntry]:
    """The links and special files below the batch folder ``prefix``, sorted by key."""
    return [entry for entry in gateway.list_special(prefix) if entry.key.startswith(f"{prefix}/")]


def check_batch_name(batch: str) -> None:
    """A batch name is one plain path segment."""
    if not batch or "/" in batch or "\\" in batch or batch in (".", ".."):
        raise InvalidInput(f"invalid batch name {batch!r}: use one folder name")


def examine_batch(
    gateway: Store,
    name: str,
    prefix: str,
    objects: Iterable[ObjectInfo],
    special: Iterable[SpecialEntry] = (),
) -> BatchContents | WaitingBatch:
    """Decide from its listing (and manifest) whether a batch's upload is complete."""
    by_path = {info.key[len(prefix) + 1 :]: info for info in objects}
    data = tuple(info for path, info in sorted(by_path.items()) if path not in CONTROL_FILES)
    others = tuple(sorted(special, key=lambda entry: entry.key))
    present = set(by_path) | {entry.key[len(prefix) + 1 :] for entry in others}
    count = len(data) + len(others)
    if MANIFEST_NAME in by_path:
        raw = gateway.read_bytes(f"{prefix}/{MANIFEST_NAME}")
        try:
            manifest = parse_manifest(raw)
        except InvalidInput as err:
            return WaitingBatch(name, prefix, f"manifest.json is not usable: {err}")
        missing = [path for path in manifest if path not in present]
        if missing:
            reason = f"{len(missing)} file(s) of the manifest not uploaded yet, e.g. {missing[0]}"
            return WaitingBatch(name, prefix, reason)
        digest = hashlib.sha256(raw).hexdigest()
        ref = BatchRef(name, prefix, "manifest", digest, count)
        return BatchContents(ref, data, manifest, others)
    if READY_MARKER in by_path:
        return BatchContents(BatchRef(name, prefix, "ready", None, count), data, None, others)
    return WaitingBatch(name, prefix, f"no {READY_MARKER} marker or {MANIFEST_NAME} yet")


def parse_manifest(raw: bytes) -> dict[str, ManifestEntry]:
    """Parse ``{"batch", "files": [{"path", "sha256", "size", "patient_id"?}]}``;
    ``InvalidInput`` when malformed."""
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"not JSON: {err}") from err
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list):
        raise InvalidInput('expected an object with a "files" list')
    entries: dict[str, ManifestEntry] = {}
    for number, item in enumerate(files):
        entry = _manifest_entry(item, number)
        if entry.path in entries:
            raise InvalidInput(f"file {entry.path!r} is listed twice")
        entries[entry.path] = entry
    return entries


def _manifest_entry(item: Any, number: int) -> ManifestEntry:
    if not isinstance(item, dict):
        raise InvalidInput(f"files[{number}] is not an object")
    path, digest, size = item.get("path"), item.get("sha256"), item.get("size")
    if not isinstance(path, str) or not _is_relative_posix(path):
        raise InvalidInput(f"files[{number}].path is not a relative posix path")
    if not isinstance(digest, str) or not SHA256_HEX.match(digest.lower()):
        raise InvalidInput(f"files[{number}].sha256 is not a hex SHA-256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"files[{number}].size is not a byte count")
    patient_id = item.get("patient_id")
    if "patient_id" in item and not is_patient_id(patient_id):
        # The value is not repeated: it is a patient's identifier.
        raise InvalidInput(
            f"files[{number}].patient_id is not a patient ID (a string of 1 to "
            f"{PATIENT_ID_MAX_CHARS} printable characters, no backslash, not only spaces)"
        )
    return ManifestEntry(path, digest.lower(), size, patient_id)


def is_patient_id(value: object) -> bool:
    """Whether ``value`` can be a DICOM PatientID (LO): what a manifest may link a slide to."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= PATIENT_ID_MAX_CHARS
        and bool(value.strip(" "))
        and value.isprintable()
        and "\\" not in value
    )


def _is_relative_posix(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\\" not in path and all(p not in ("", ".", "..") for p in parts)


def batch_fingerprint(
    prefix: str, objects: Iterable[ObjectInfo], special: Iterable[SpecialEntry] = ()
) -> str:
    """SHA-256 over the sorted (path, size) of a batch's data objects, and (path, kind) of its
    links and special files: what an ingest saw."""
    entries = [(info.key[len(prefix) + 1 :], str(info.size)) for info in objects]
    entries = [(path, size) for path, size in entries if path not in CONTROL_FILES]
    entries += [(entry.key[len(prefix) + 1 :], entry.kind) for entry in special]
    text = "".join(f"{path}\t{size_or_kind}\n" for path, size_or_kind in sorted(entries))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

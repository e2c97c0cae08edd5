"""Which versions of a snapshot's own objects are the snapshot, and what was put over them.

On a store that keeps versions, a plain PUT or DELETE cannot change a locked version, but it can
put a new version or a delete marker over it, and that is what a read without a version id
sees. So the snapshot is the *first* version of its manifest, its card and its index entry
(``snapshots/_index/<name>.json``: created exclusively and locked, it records the versions and
SHA-256s of the other two and the top hash); every later version or delete marker of those
keys is tampering. Readers and ``verify`` read the first versions whatever lies over them.

A store without versions has only the current files: a manifest, card and index replaced
together look genuine there (only a top hash kept elsewhere shows it), and a deleted card is
no snapshot at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mira.errors import ObjectNotFound
from storage import ObjectInfo, ObjectVersion, Retention, Store
from tasks import layout
from tasks.dataset.manifest import card_key, manifest_key


@dataclass(frozen=True)
class Overwrite:
    """A version or delete marker put over one of a snapshot's own (first) versions."""

    key: str
    version_id: str | None
    snapshot_version: str | None  # the first version, the snapshot's; None: it has none
    delete_marker: bool
    latest: bool  # what a read without a version id sees

    def describe(self) -> str:
        what = "delete marker" if self.delete_marker else "version"
        over = (
            f"over the snapshot's version {self.snapshot_version}"
            if self.snapshot_version
            else "where the snapshot has no version"
        )
        seen = " (what a plain read sees)" if self.latest else ""
        return f"{self.key}: {what} {self.version_id} put {over}{seen}"


@dataclass(frozen=True)
class SnapshotVersions:
    """Where a snapshot's card and manifest are, and what lies over them."""

    name: str
    versioned: bool
    card_version: str | None  # None on a store without versions: the current card
    manifest_version: str | None
    index: Mapping[str, Any] | None  # None: no index entry (a snapshot older than the index)
    overwrites: tuple[Overwrite, ...]
    problems: tuple[str, ...]  # the index disagrees with the first versions


def index_entry(
    name: str, card: ObjectInfo, manifest: ObjectInfo, top_hash: str, created_at: str
) -> dict[str, Any]:
    """What the index records of a new snapshot: its card's and manifest's versions and hashes."""
    return {
        "snapshot": name,
        "created_at": created_at,
        "top_hash": top_hash,
        "card": {"key": card.key, "version_id": card.version_id, "sha256": card.sha256},
        "manifest": {
            "key": manifest.key,
            "version_id": manifest.version_id,
            "sha256": manifest.sha256,
        },
    }


def write_index(
    store: Store, name: str, entry: Mapping[str, Any], retention: Retention | None
) -> ObjectInfo:
    """Create the snapshot's index entry exclusively (``AlreadyExists`` if there is one)."""
    text = json.dumps(entry, indent=2, sort_keys=True) + "\n"
    key = layout.snapshot_index_key(name)
    return store.write_bytes(key, text.encode(), exclusive=True, retention=retention)


def own_versions(store: Store, name: str) -> dict[str, list[ObjectVersion]]:
    """Every version and delete marker of the snapshot's index entry, card and manifest."""
    own = (layout.snapshot_index_key(name), card_key(name), manifest_key(name))
    listed: dict[str, list[ObjectVersion]] = {key: [] for key in own}
    for version in store.list_versions(layout.snapshot_folder(name) + "/"):
        if version.key in listed:
            listed[version.key].append(version)
    listed[own[0]] = [v for v in store.list_versions(own[0]) if v.key == own[0]]
    return listed


def locate_snapshot(store: Store, name: str) -> SnapshotVersions:
    """The snapshot's own versions (see the module); ``ObjectNotFound`` if it has none."""
    index_key = layout.snapshot_index_key(name)
    if not store.supports_versions:
        if not store.exists(index_key):
            return SnapshotVersions(name, False, None, None, None, (), ())
        index, problems = _parse_index(store, index_key, None)
        return SnapshotVersions(name, False, None, None, index, (), tuple(problems))
    listed = own_versions(store, name)
    first = {
        key: next((v.version_id for v in versions if not v.delete_marker), None)
        for key, versions in listed.items()
    }
    if not any(first.values()):
        raise ObjectNotFound(f"no snapshot {name!r} (no {store.url_of(card_key(name))})")
    overwrites = tuple(
        Overwrite(key, v.version_id, first[key], v.delete_marker, v.latest)
        for key, versions in listed.items()
        for v in versions
        if v.delete_marker or v.version_id != first[key]
    )
    index, problems = _parse_index(store, index_key, first[index_key])
    if index is not None:
        for part, key in (("card", card_key(name)), ("manifest", manifest_key(name))):
            recorded = index[part]["version_id"]
            if recorded != first[key]:
                problems.append(
                    f"the index records version {recorded} of {key}, but its first is {first[key]}"
                )
    return SnapshotVersions(
        name,
        True,
        first[card_key(name)],
        first[manifest_key(name)],
        index,
        overwrites,
        tuple(problems),
    )


def _parse_index(
    store: Store, key: str, version_id: str | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The index entry at ``version_id`` (on a store without versions: the current file), or a
    problem when it is not one ``index_entry`` wrote (a file replaced behind mira's back)."""
    if version_id is None and store.supports_versions:
        return None, []
    try:
        index = json.loads(store.read_bytes(key, version_id))
    except ValueError:
        index = None
    if not _is_index_entry(index):
        return None, [f"the index entry {key} is not one mira wrote"]
    return index, []


def _is_index_entry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("top_hash"), str)
        and all(
            isinstance(value.get(part), dict)
            and "version_id" in value[part]
            and isinstance(value[part].get("sha256"), str)
            for part in ("card", "manifest")
        )
    )


def read_card(store: Store, located: SnapshotVersions) -> tuple[dict[str, Any], list[str]]:
    """The snapshot's card, and every way it disagrees with its index and first versions."""
    name, key = located.name, card_key(located.name)
    try:
        if located.versioned and located.card_version is None:
            raise ObjectNotFound(f"no version of {store.url_of(key)}")
        data = store.read_bytes(key, located.card_version)
    except ObjectNotFound as err:
        raise ObjectNotFound(f"no snapshot {name!r} (no {store.url_of(key)})") from err
    card: dict[str, Any] = json.loads(data)
    problems = list(located.problems)
    if located.versioned and card["manifest"].get("version_id") != located.manifest_version:
        problems.append(
            f"the card names version {card['manifest'].get('version_id')} of the manifest, "
            f"but its first is {located.manifest_version}"
        )
    index = located.index
    if index is None:
        return card, problems
    if hashlib.sha256(data).hexdigest() != index["card"]["sha256"]:
        problems.append("the card's bytes differ from the SHA-256 in the index")
    if card["top_hash"] != index["top_hash"]:
        problems.append(f"the card's top hash is not {index['top_hash']}, the index's")
    if card["manifest"]["sha256"] != index["manifest"]["sha256"]:
        problems.append("the card and the index record different manifest SHA-256s")
    return card, problems

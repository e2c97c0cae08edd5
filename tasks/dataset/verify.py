"""Verifying and comparing snapshots: every object re-hashed at its pinned version; diffs by key.

The snapshot verified is its own first (locked) card and manifest (``versions``); versions and
delete markers put over them are reported as tampering, and the snapshot is still verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mira.errors import IntegrityError, ObjectNotFound
from storage import Store, sha256_stream
from tasks.dataset.manifest import BATCH_ROWS, SnapshotEntry, entries, top_hash
from tasks.dataset.reader import load_manifest, read_manifest
from tasks.dataset.versions import Overwrite, locate_snapshot, read_card
from tasks.parallel import Progress, parallel_map

DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class SnapshotDiff:
    """What changed from snapshot ``a`` to ``b``; each table is sorted by key."""

    a: str
    b: str
    added: pa.Table
    removed: pa.Table
    changed: pa.Table
    moved: pa.Table

    @property
    def identical(self) -> bool:
        return not any(t.num_rows for t in (self.added, self.removed, self.changed, self.moved))


@dataclass(frozen=True)
class Observation:
    """An object as found now: its version, size and SHA-256 (``found`` False: missing)."""

    key: str
    found: bool
    size: int = 0
    sha256: str = ""
    version_id: str | None = None


@dataclass(frozen=True)
class ObjectProblem:
    """One difference between a snapshot and the store: changed, missing or appeared."""

    key: str
    problem: str
    version_id: str | None = None
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify_snapshot``."""

    name: str
    top_hash: str
    checked: int
    manifest_problems: tuple[str, ...]
    problems: tuple[ObjectProblem, ...]
    overwrites: tuple[Overwrite, ...] = ()  # tampering with the snapshot's own objects
    limits: str = ""  # what this store lets verify not see

    @property
    def ok(self) -> bool:
        return not self.manifest_problems and not self.problems and not self.overwrites

    def count(self, problem: str) -> int:
        return sum(1 for p in self.problems if p.problem == problem)

    def summary(self) -> str:
        """One line: what was checked and what differs."""
        verified = f"the manifest and all {self.checked} objects verified"
        if self.ok:
            return f"snapshot {self.name!r}: {verified}"
        if self.problems or self.manifest_problems:
            parts = [f"{self.count(kind)} {kind}" for kind in ("changed", "missing", "appeared")]
            text = f"snapshot {self.name!r} does not verify: {', '.join(parts)}"
            if self.manifest_problems:
                text += f"; manifest: {'; '.join(self.manifest_problems)}"
            named = [p.key for p in self.problems[:3]]
            text += f" (e.g. {', '.join(named)})" if named else ""
        else:
            text = f"snapshot {self.name!r}: {verified} at its locked versions"
        if self.overwrites:
            keys = sorted({o.key for o in self.overwrites})
            text += (
                f"; TAMPERING: {len(self.overwrites)} versions or delete markers put over "
                f"its own objects ({', '.join(keys)})"
            )
        return text


DIFF_SQL = """
SELECT coalesce(b.key, a.key) AS key, a.key AS old_key, b.key AS new_key,
       a.sha256 AS old_sha256, b.sha256 AS new_sha256,
       a.size AS old_size, b.size AS new_size,
       a.split AS old_split, b.split AS new_split,
       a.version_id AS old_version_id, b.version_id AS new_version_id
FROM a FULL OUTER JOIN b ON a.key = b.key
WHERE a.key IS NULL OR b.key IS NULL
   OR a.sha256 IS DISTINCT FROM b.sha256 OR a.size IS DISTINCT FROM b.size
   OR a.split IS DISTINCT FROM b.split
"""


def diff_manifests(a: pa.Table, b: pa.Table, names: tuple[str, str] = ("a", "b")) -> SnapshotDiff:
    """Objects added, removed, changed (content) and moved (split) from ``a`` to ``b``."""
    connection = duckdb.connect()
    try:
        connection.register("a", a.select(["key", "sha256", "size", "split", "version_id"]))
        connection.register("b", b.select(["key", "sha256", "size", "split", "version_id"]))
        relation = connection.sql(DIFF_SQL)
        rows = relation.to_arrow_table() if relation is not None else pa.table({})
    finally:
        connection.close()
    rows = rows.sort_by("key")
    old_missing, new_missing = pc.is_null(rows["old_key"]), pc.is_null(rows["new_key"])
    both = pc.invert(pc.or_(old_missing, new_missing))
    content = pc.or_(
        pc.not_equal(rows["old_sha256"], rows["new_sha256"]),
        pc.not_equal(rows["old_size"], rows["new_size"]),
    )
    split = pc.fill_null(pc.not_equal(rows["old_split"], rows["new_split"]), True)
    return SnapshotDiff(
        a=names[0],
        b=names[1],
        added=rows.filter(old_missing).select(["key", "new_sha256", "new_size", "new_split"]),
        removed=rows.filter(new_missing).select(["key", "old_sha256", "old_size", "old_split"]),
        changed=rows.filter(pc.and_(both, content)).select(
            ["key", "old_sha256", "new_sha256", "old_size", "new_size"]
        ),
        moved=rows.filter(pc.and_(both, split)).select(["key", "old_split", "new_split"]),
    )


def diff_snapshots(store: Store, a: str, b: str) -> SnapshotDiff:
    """``diff_manifests`` of two snapshots, each manifest checked against its top hash."""
    return diff_manifests(load_manifest(store, a), load_manifest(store, b), (a, b))


def observe(store: Store, key: str, version_id: str | None = None) -> Observation:
    """Hash the object at ``version_id`` (default: the current version, reported for pinning)."""
    try:
        if version_id is None:
            version_id = store.info(key).version_id
        with store.open_read(key, version_id) as stream:
            digest, size = sha256_stream(stream)
    except ObjectNotFound:
        return Observation(key=key, found=False, version_id=version_id)
    return Observation(key=key, found=True, size=size, sha256=digest, version_id=version_id)


def list_folder(store: Store, folder: str) -> list[str]:
    """The keys strictly below ``folder``."""
    return [o.key for o in store.list(folder + "/") if o.key.startswith(folder + "/")]


def unlisted_keys(
    store: Store, folders: Sequence[str], listed: set[str], workers: int
) -> list[str]:
    """Keys inside ``folders`` that are not in ``listed``."""
    found = parallel_map(lambda f: list_folder(store, f), folders, workers)
    return sorted({key for keys in found for key in keys if key not in listed})


def _manifest_problems(
    store: Store, name: str, card: Mapping[str, Any], expected_top_hash: str | None
) -> tuple[pa.Table, list[str]]:
    """The manifest at its recorded version, and every way it disagrees with the card."""
    problems = []
    if expected_top_hash and expected_top_hash != card["top_hash"]:
        problems.append(f"the card's top hash {card['top_hash']} is not {expected_top_hash}")
    recorded = card["manifest"]
    try:
        data, manifest = read_manifest(store, name, recorded.get("version_id"))
    except ObjectNotFound as err:
        raise IntegrityError(f"snapshot {name!r} has lost its manifest: {err}") from err
    if hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        problems.append("its bytes differ from the SHA-256 in the card")
    if top_hash(manifest) != card["top_hash"]:
        problems.append("its rows do not match the top hash in the card")
    keys = manifest.column("key").combine_chunks()
    if len(keys) > 1 and not pc.all(pc.less(keys.slice(0, len(keys) - 1), keys.slice(1))).as_py():
        problems.append("its keys are not sorted and unique")
    return manifest, problems


def limits_of(store: Store, card: Mapping[str, Any], expected_top_hash: str | None) -> str:
    """What tampering this store lets ``verify`` miss, unless a top hash kept elsewhere is given."""
    if expected_top_hash:
        return ""
    keep = "compare the top hash with a copy kept elsewhere (--top-hash)"
    if not store.supports_versions:
        return (
            "this store keeps no versions: a manifest, card and index replaced together look "
            f"genuine, and a deleted card reads as no snapshot; {keep}"
        )
    retention = card.get("retention", {})
    if retention.get("enforcement") != "s3-object-lock":
        return (
            "no Object Lock: whoever may delete versions can remove the snapshot's own and put "
            f"others first; {keep}"
        )
    if retention.get("mode") == "GOVERNANCE":
        return (
            "GOVERNANCE lock: a user allowed to bypass governance retention can delete the "
            f"snapshot's versions and put others first; {keep}"
        )
    return ""


def _compare(entry: SnapshotEntry, seen: Observation) -> ObjectProblem | None:
    if not seen.found:
        return ObjectProblem(entry.key, "missing", entry.version_id, entry.sha256, None, entry.size)
    if seen.sha256 == entry.sha256 and seen.size == entry.size:
        return None
    return ObjectProblem(
        entry.key, "changed", entry.version_id, entry.sha256, seen.sha256, entry.size, seen.size
    )


def check_objects(
    store: Store, manifest: pa.Table, workers: int, progress: Progress | None = None
) -> list[ObjectProblem]:
    """Re-hash every manifest entry at its recorded version, a batch of rows at a time."""
    problems: list[ObjectProblem] = []
    for start in range(0, manifest.num_rows, BATCH_ROWS):
        batch = list(entries(manifest.slice(start, BATCH_ROWS)))
        seen = parallel_map(
            lambda e: observe(store, e.key, e.version_id),
            batch,
            workers,
            progress,
            "verify objects",
            (start, manifest.num_rows),
        )
        problems += [p for e, o in zip(batch, seen, strict=True) if (p := _compare(e, o))]
    return problems


def verify_snapshot(
    store: Store,
    name: str,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    expected_top_hash: str | None = None,
) -> VerifyReport:
    """Re-hash every object of snapshot ``name`` at its recorded version; report all differences.

    Also checks the manifest against the card's top hash (and ``expected_top_hash``, a copy
    kept elsewhere), lists objects that appeared inside the folders the snapshot covers, and
    reports versions and delete markers put over the snapshot's own card, manifest and index.
    """
    located = locate_snapshot(store, name)
    card, card_problems = read_card(store, located)
    manifest, manifest_problems = _manifest_problems(store, name, card, expected_top_hash)
    problems = check_objects(store, manifest, workers, progress)
    coverage = card.get("coverage", {})
    listed = set(manifest.column("key").to_pylist()) | set(coverage.get("ignored_keys", []))
    appeared = unlisted_keys(store, coverage.get("folders", []), listed, workers)
    problems += [ObjectProblem(key, "appeared") for key in appeared]
    return VerifyReport(
        name=name,
        top_hash=card["top_hash"],
        checked=manifest.num_rows,
        manifest_problems=tuple(card_problems + manifest_problems),
        problems=tuple(sorted(problems, key=lambda p: (p.key, p.problem))),
        overwrites=located.overwrites,
        limits=limits_of(store, card, expected_top_hash),
    )

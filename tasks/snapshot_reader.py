"""Everything that only reads a snapshot: format, checked loading, proofs, verify, list, diff, iteration.

A snapshot is ``snapshots/<name>/manifest.parquet`` (one row per object, sorted by key) and
``snapshots/<name>/card.json`` (counts, provenance and the top hash). Every read here checks
the manifest against the card's top hash before trusting a single row, and ``iter_split``
checks each object's SHA-256 as it reads it. Writing (create, export) is ``tasks.snapshot``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mira.errors import IntegrityError, InvalidInput, ObjectNotFound
from storage import Store, sha256_stream
from tasks import merkle

Progress = Callable[[str, int, int], None]
T = TypeVar("T")
R = TypeVar("R")
DEFAULT_WORKERS = 8
IN_FLIGHT_PER_WORKER = 4
BATCH_ROWS = 10_000  # manifest rows turned into Python objects at a time

SNAPSHOT_PREFIX = "snapshots"
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("version_id", pa.string()),  # null where the store keeps no versions
        ("kind", pa.string()),  # instance | slide | pyramid
        ("patient_id", pa.string()),  # the split unit; "slide:<id>" for a slide without one
        ("split", pa.string()),
        ("modality", pa.string()),
        ("qa_status", pa.string()),  # passed | warned | failed | accepted | unchecked
        ("batch", pa.string()),  # lineage: the ingest batch
        ("mira_version", pa.string()),  # lineage: the mira that wrote the object
    ]
)
LEAF_COLUMNS = tuple(MANIFEST_SCHEMA.names)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SnapshotEntry:
    """One manifest row: an object of the dataset, pinned by version and SHA-256."""

    key: str
    size: int
    sha256: str
    version_id: str | None
    kind: str
    patient_id: str
    split: str
    modality: str | None
    qa_status: str
    batch: str | None
    mira_version: str | None

    def encoded(self) -> bytes:
        """The bytes its Merkle leaf hash covers (see ``merkle.encode_entries``)."""
        values = ["" if v is None else str(v) for v in (getattr(self, n) for n in LEAF_COLUMNS)]
        return (merkle.FIELD_SEPARATOR + merkle.FIELD_SEPARATOR.join(values)).encode()


@dataclass(frozen=True)
class SnapshotSummary:
    """One line of ``mira snapshot list``."""

    name: str
    created_at: str
    entries: int
    bytes: int
    top_hash: str
    enforcement: str
    complete: bool


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

    @property
    def ok(self) -> bool:
        return not self.manifest_problems and not self.problems

    def count(self, problem: str) -> int:
        return sum(1 for p in self.problems if p.problem == problem)

    def summary(self) -> str:
        """One line: what was checked and what differs."""
        if self.ok:
            return f"snapshot {self.name!r}: the manifest and all {self.checked} objects verified"
        parts = [f"{self.count(kind)} {kind}" for kind in ("changed", "missing", "appeared")]
        text = f"snapshot {self.name!r} does not verify: {', '.join(parts)}"
        if self.manifest_problems:
            text += f"; manifest: {'; '.join(self.manifest_problems)}"
        named = [p.key for p in self.problems[:3]]
        return text + (f" (e.g. {', '.join(named)})" if named else "")


def check_name(name: str) -> str:
    """A snapshot name is one path segment of letters, digits, ``.``, ``_`` and ``-``."""
    if not _NAME.match(name):
        raise InvalidInput(f"invalid snapshot name {name!r}: use letters, digits, '.', '_', '-'")
    return name


def manifest_key(name: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{check_name(name)}/manifest.parquet"


def card_key(name: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{check_name(name)}/card.json"


def export_prefix(name: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{check_name(name)}/export"


def manifest_bytes(manifest: pa.Table) -> bytes:
    """The manifest as Parquet (zstd); the top hash covers rows, not these bytes."""
    buffer = io.BytesIO()
    pq.write_table(manifest.cast(MANIFEST_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def top_hash(manifest: pa.Table) -> str:
    """The Merkle root over the manifest's rows in order."""
    return merkle.merkle_root(merkle.leaf_hashes(manifest, LEAF_COLUMNS))


def entries(manifest: pa.Table) -> Iterator[SnapshotEntry]:
    """The manifest's rows as entries."""
    names = [f.name for f in fields(SnapshotEntry)]
    for batch in manifest.select(names).to_batches(max_chunksize=BATCH_ROWS):
        for row in batch.to_pylist():
            yield SnapshotEntry(**row)


def prove(manifest: pa.Table, entry: SnapshotEntry) -> merkle.MerkleProof:
    """An inclusion proof of ``entry`` in the manifest: a few dozen hashes, not the manifest."""
    index = pc.index(manifest.column("key"), entry.key).as_py()
    if index < 0:
        raise InvalidInput(f"{entry.key} is not in this manifest")
    levels = merkle.tree_levels(merkle.leaf_hashes(manifest, LEAF_COLUMNS))
    return merkle.proof_for(levels, index)


def verify_proof(root: str, entry: SnapshotEntry, proof: merkle.MerkleProof) -> bool:
    """Whether ``entry``, exactly as given, is row ``proof.index`` of the snapshot with ``root``."""
    return merkle.verify_path(root, merkle.leaf_hash(entry.encoded()), proof)


def load_card(store: Store, name: str) -> dict[str, Any]:
    """The dataset card of snapshot ``name``."""
    try:
        card: dict[str, Any] = store.read_json(card_key(name))
    except ObjectNotFound as err:
        raise ObjectNotFound(f"no snapshot {name!r} (no {store.url_of(card_key(name))})") from err
    return card


def read_manifest(store: Store, name: str, version_id: str | None = None) -> tuple[bytes, pa.Table]:
    """The manifest's bytes and rows, unchecked (``load_manifest`` checks them)."""
    data = store.read_bytes(manifest_key(name), version_id)
    return data, pq.read_table(io.BytesIO(data))


def load_manifest(store: Store, name: str, card: Mapping[str, Any] | None = None) -> pa.Table:
    """The manifest, read at the version the card recorded and checked against its top hash."""
    card = card or load_card(store, name)
    recorded = card["manifest"]
    data, manifest = read_manifest(store, name, recorded.get("version_id"))
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded["sha256"] or top_hash(manifest) != card["top_hash"]:
        raise IntegrityError(
            f"the manifest of snapshot {name!r} does not match the top hash in its card: "
            "run `mira snapshot verify` for details"
        )
    return manifest


def list_snapshots(store: Store) -> list[SnapshotSummary]:
    """Every snapshot in the store, by name; one without a card is incomplete."""
    names = sorted(
        {o.key.split("/")[1] for o in store.list(f"{SNAPSHOT_PREFIX}/") if o.key.count("/") >= 2}
    )
    summaries = []
    for name in names:
        try:
            card = load_card(store, name)
        except ObjectNotFound:
            summaries.append(SnapshotSummary(name, "", 0, 0, "", "", complete=False))
            continue
        summaries.append(
            SnapshotSummary(
                name=name,
                created_at=card["created_at"],
                entries=card["manifest"]["entries"],
                bytes=card["manifest"]["object_bytes"],
                top_hash=card["top_hash"],
                enforcement=card["retention"]["enforcement"],
                complete=True,
            )
        )
    return summaries


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


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    progress: Progress | None = None,
    step: str = "",
    offset: tuple[int, int] | None = None,
) -> list[R]:
    """``fn`` over ``items`` in order on a thread pool (object I/O waits on network or disk).

    At most a few tasks per worker are in flight, so a million items never means a million
    futures. ``offset`` is (done before, grand total) when ``items`` is one batch of many.
    """
    results: list[Any] = [None] * len(items)
    done, total = offset or (0, len(items))
    queue = iter(enumerate(items))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: dict[Future[R], int] = {}

        def submit(count: int) -> None:
            for index, item in itertools.islice(queue, count):
                pending[pool.submit(fn, item)] = index

        submit(IN_FLIGHT_PER_WORKER * max(1, workers))
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
            submit(len(finished))
            done += len(finished)
            if progress is not None:
                progress(step, done, total)
    return results


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
    """The manifest at its recorded version, and every way it or its key disagrees with the card."""
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
    if recorded.get("version_id"):
        try:
            current = store.info(manifest_key(name)).version_id
        except ObjectNotFound:
            current = "(deleted)"
        if current != recorded["version_id"]:
            problems.append(
                f"its key now shows version {current}, not the locked {recorded['version_id']}"
            )
    return manifest, problems


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
    kept elsewhere), and lists objects that appeared inside the folders the snapshot covers.
    """
    card = load_card(store, name)
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
        manifest_problems=tuple(manifest_problems),
        problems=tuple(sorted(problems, key=lambda p: (p.key, p.problem))),
    )


def read_checked(store: Store, entry: SnapshotEntry) -> bytes:
    """The object's bytes at the recorded version; ``IntegrityError`` naming it on a mismatch."""
    data = store.read_bytes(entry.key, entry.version_id)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256 or len(data) != entry.size:
        raise IntegrityError(
            f"{store.url_of(entry.key)} changed: SHA-256 {digest}, the snapshot has {entry.sha256}"
        )
    return data


def iter_split(store: Store, name: str, split: str) -> Iterator[tuple[SnapshotEntry, bytes]]:
    """Each object of one split of snapshot ``name`` with its bytes, every hash checked."""
    manifest = load_manifest(store, name)
    if split not in set(manifest.column("split").to_pylist()):
        raise InvalidInput(f"snapshot {name!r} has no split {split!r}")
    for entry in entries(manifest.filter(pc.equal(manifest["split"], split))):
        yield entry, read_checked(store, entry)


def iter_export(store: Store, lines: Iterable[str]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each object an exported ``<split>.jsonl`` lists, with its bytes, every hash checked."""
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        data = store.read_bytes(record["key"], record["version_id"])
        digest = hashlib.sha256(data).hexdigest()
        if digest != record["sha256"]:
            raise IntegrityError(
                f"{record['url']} changed: SHA-256 {digest}, the export has {record['sha256']}"
            )
        yield record, data

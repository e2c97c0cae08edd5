"""One contract for every store backend: a local folder and the real S3 server."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from mira.errors import (
    AlreadyExists,
    ConfigError,
    InvalidInput,
    MiraError,
    ObjectLocked,
    ObjectNotFound,
)
from storage import Retention, Store, open_object, open_store, sha256_stream
from storage.local import TEMP_MARK, LocalStore
from storage.s3 import S3Store
from tests.relay import Relay
from tests.seaweedfs import SeaweedServer

MiB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """``size`` deterministic bytes produced on demand, never held in memory at once."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.block = hashlib.sha256(b"mira").digest() * (MiB // 32)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.remaining, len(self.block))
        buffer[:count] = self.block[:count]
        self.remaining -= count
        return count


class PeakRss:
    """Samples this process's resident memory in the background while the block runs."""

    def __enter__(self) -> PeakRss:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def test_write_read_roundtrip_reports_sha256(store: Store) -> None:
    info = store.write_bytes("a/b/c.bin", b"hello mira")
    assert info.sha256 == hashlib.sha256(b"hello mira").hexdigest()
    assert info.size == 10
    assert store.read_bytes("a/b/c.bin") == b"hello mira"
    assert store.sha256("a/b/c.bin") == info.sha256
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")


def test_read_ranges_returns_each_range_in_order(store: Store) -> None:
    data = bytes(range(256)) * 1000
    store.write_bytes("r/blob", data)
    ranges = [(1000, 10), (0, 3), (255_990, 10), (5000, 0), (70_000, 4096)]
    assert store.read_ranges("r/blob", ranges) == [data[o : o + n] for o, n in ranges]
    assert store.read_ranges("r/blob", []) == []
    with pytest.raises(ObjectNotFound):
        store.read_ranges("r/missing", [(0, 1)])


def test_list_is_recursive_sorted_with_sizes(store: Store) -> None:
    for key, size in [("x/2.bin", 2), ("x/1.bin", 1), ("x/deep/er/3.bin", 3), ("y/4.bin", 4)]:
        store.write_bytes(key, b"z" * size)
    listed = [(o.key, o.size) for o in store.list("x")]
    assert listed == [("x/1.bin", 1), ("x/2.bin", 2), ("x/deep/er/3.bin", 3)]
    assert [o.key for o in store.list()] == ["x/1.bin", "x/2.bin", "x/deep/er/3.bin", "y/4.bin"]
    assert list(store.list("nothing-here")) == []


def test_info_copy_delete(store: Store) -> None:
    store.write_bytes("src.txt", b"payload")
    info = store.info("src.txt")
    assert info.size == 7 and info.etag
    store.copy("src.txt", "dst/copy.txt")
    assert store.read_bytes("dst/copy.txt") == b"payload"
    store.delete("src.txt")
    assert not store.exists("src.txt")
    with pytest.raises(ObjectNotFound, match=r"src\.txt"):
        store.read_bytes("src.txt")
    with pytest.raises(ObjectNotFound):
        store.delete("src.txt")
    with pytest.raises(FileNotFoundError):  # mira's errors are also the matching builtins
        store.info("never.txt")


def test_overwrite_replaces_whole_object(store: Store) -> None:
    store.write_bytes("k", b"old" * 1000)
    store.write_bytes("k", b"new")
    assert store.read_bytes("k") == b"new"


def test_exclusive_create_refuses_second_writer(store: Store) -> None:
    store.write_bytes("once.json", b"first", exclusive=True)
    with pytest.raises(AlreadyExists, match=r"once\.json"):
        store.write_bytes("once.json", b"second", exclusive=True)
    assert store.read_bytes("once.json") == b"first"


def test_exclusive_create_race_has_exactly_one_winner(store: Store) -> None:
    def attempt(n: int) -> bool:
        try:
            store.write_bytes("race.txt", f"writer {n}".encode(), exclusive=True)
        except AlreadyExists:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(attempt, range(8)))
    assert wins.count(True) == 1
    assert store.read_bytes("race.txt") == f"writer {wins.index(True)}".encode()


def test_parallel_writers_to_different_keys(store: Store) -> None:
    payloads = {
        f"par/{n:03d}.bin": hashlib.sha256(str(n).encode()).digest() * 64 for n in range(40)
    }
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda kv: store.write_bytes(*kv), payloads.items()))
    assert {i.key for i in infos} == set(payloads)
    assert [o.key for o in store.list("par")] == sorted(payloads)
    for key, data in payloads.items():
        assert store.read_bytes(key) == data


def test_child_store_is_rooted_below(store: Store) -> None:
    child = store.child("zone/one")
    child.write_bytes("f.txt", b"1")
    assert store.read_bytes("zone/one/f.txt") == b"1"
    assert [o.key for o in child.list()] == ["f.txt"]


def test_keys_cannot_escape_the_store(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.write_bytes("../outside.txt", b"x")


def test_delete_prefix(store: Store) -> None:
    for n in range(5):
        store.write_bytes(f"tmp/{n}", b"x")
    store.write_bytes("keep", b"x")
    assert store.delete_prefix("tmp") == 5
    assert [o.key for o in store.list()] == ["keep"]


def test_readers_never_see_a_partial_object(store: Store) -> None:
    """While a large object is being replaced, every read returns the old or the new whole."""
    old, new = b"A" * (20 * MiB), b"B" * (20 * MiB)
    store.write_bytes("big", old)
    seen: list[bytes] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                data = store.read_bytes("big")
                assert data in (old, new), "a whole version, never a mix"
                seen.append(data[:1])
        except BaseException as err:  # surfaced in the test, not lost with the thread
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in (new, old, new):  # several replacements: several chances to cut a read
            store.write_stream("big", io.BytesIO(version))
        time.sleep(0.2)
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert seen and store.read_bytes("big") == new


@pytest.mark.slow
def test_300mb_stream_roundtrip_with_flat_memory(store: Store) -> None:
    size = 300 * MiB
    expected = hashlib.sha256()
    probe = PatternStream(size)
    while chunk := probe.read(8 * MiB):
        expected.update(chunk)
    with PeakRss() as writing:
        info = store.write_stream("huge.bin", PatternStream(size))
    assert info.size == size
    assert info.sha256 == expected.hexdigest()
    with PeakRss() as reading:
        digest = hashlib.sha256()
        total = 0
        with store.open_read("huge.bin") as stream:
            while chunk := stream.read(4 * MiB):
                digest.update(chunk)
                total += len(chunk)
    assert total == size and digest.hexdigest() == expected.hexdigest()
    # Bounded buffers (a part or a read block), never the 300 MB object.
    assert writing.growth < 100 * MiB, writing.growth
    assert reading.growth < 100 * MiB, reading.growth


def test_local_lock_makes_object_read_only(local_store: Store) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    local_store.write_bytes("locked.txt", b"data", retention=Retention("COMPLIANCE", until))
    retention = local_store.get_retention("locked.txt")
    assert retention is not None and retention.mode == "COMPLIANCE"
    with pytest.raises(ObjectLocked):
        local_store.delete("locked.txt")
    with pytest.raises(ObjectLocked):
        local_store.write_bytes("locked.txt", b"other")
    assert local_store.read_bytes("locked.txt") == b"data"
    assert not local_store.supports_object_lock


@pytest.mark.s3
def test_compliance_lock_refuses_version_deletion(s3_lock_store: Store) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    info = s3_lock_store.write_bytes(
        "worm.bin", b"evidence", retention=Retention("COMPLIANCE", until)
    )
    assert info.version_id
    assert s3_lock_store.supports_object_lock
    retention = s3_lock_store.get_retention("worm.bin", info.version_id)
    assert retention is not None and retention.mode == "COMPLIANCE"
    assert abs((retention.until - until).total_seconds()) < 2
    with pytest.raises(ObjectLocked):
        s3_lock_store.delete("worm.bin", version_id=info.version_id)
    # Asked again, the server still has that version with its bytes.
    assert s3_lock_store.read_bytes("worm.bin", version_id=info.version_id) == b"evidence"
    with pytest.raises(PermissionError):
        s3_lock_store.set_retention(
            "worm.bin", Retention("COMPLIANCE", until - timedelta(hours=12)), info.version_id
        )


@pytest.mark.s3
def test_governance_lock_on_existing_version(s3_lock_store: Store) -> None:
    info = s3_lock_store.write_bytes("gov.bin", b"x")
    assert s3_lock_store.get_retention("gov.bin", info.version_id) is None
    until = datetime.now(UTC) + timedelta(hours=1)
    s3_lock_store.set_retention("gov.bin", Retention("GOVERNANCE", until), info.version_id)
    retention = s3_lock_store.get_retention("gov.bin", info.version_id)
    assert retention is not None and retention.mode == "GOVERNANCE"
    with pytest.raises(ObjectLocked):
        s3_lock_store.delete("gov.bin", version_id=info.version_id)


@pytest.mark.s3
def test_large_exclusive_write_uses_conditional_multipart(s3_store: Store) -> None:
    s3_store.write_stream("mp.bin", PatternStream(40 * MiB), exclusive=True)
    with pytest.raises(AlreadyExists):
        s3_store.write_stream("mp.bin", PatternStream(40 * MiB), exclusive=True)
    assert s3_store.info("mp.bin").size == 40 * MiB


@pytest.mark.s3
def test_plain_bucket_has_no_object_lock(s3_store: Store) -> None:
    assert not s3_store.supports_object_lock


@pytest.mark.s3
def test_unreachable_endpoint_is_a_clear_error(s3_server: object) -> None:
    from storage import S3Config
    from tests.seaweedfs import free_port

    dead = open_store(
        "s3://nobucket/x",
        S3Config(
            endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key="b"
        ),
    )
    with pytest.raises(MiraError, match="nobucket"):
        dead.read_bytes("k")


def test_open_store_dispatches_by_scheme(tmp_path: object) -> None:
    assert isinstance(open_store("data/x"), LocalStore)
    assert isinstance(open_store("file:///tmp/x"), LocalStore)
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    with pytest.raises(ConfigError, match="gs://"):
        open_store("gs://bucket")


def test_listing_a_store_that_does_not_exist_yet_is_empty(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    open_store(root / "sibling").write_bytes("x", b"1")
    assert list(open_store(root / "absent").list()) == []


def test_only_transient_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from mira.errors import TransientStoreError
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.0)
    calls: list[str] = []

    @errors.with_retries
    def flaky() -> str:
        calls.append("flaky")
        if len(calls) < 3:
            raise TransientStoreError("503 from s3://b/k")
        return "done"

    assert flaky() == "done" and len(calls) == 3

    @errors.with_retries
    def missing() -> None:
        calls.append("missing")
        raise ObjectNotFound("no such object: s3://b/k")

    with pytest.raises(ObjectNotFound):
        missing()
    assert calls.count("missing") == 1


def test_backend_errors_are_classified() -> None:
    from mira.errors import AccessDenied, TransientStoreError
    from storage.errors import classify

    class ServiceError(Exception):
        """Shaped like a botocore ClientError (tests do not import the backend)."""

        def __init__(self, code: str) -> None:
            super().__init__(code)
            self.response = {"Error": {"Code": code, "Message": code}}

    def client_error(code: str) -> Exception:
        wrapped = OSError(code)  # s3fs raises OSError subclasses from the client error
        wrapped.__cause__ = ServiceError(code)
        return wrapped

    assert isinstance(classify(client_error("SlowDown"), "s3://b/k"), TransientStoreError)
    assert isinstance(classify(client_error("PreconditionFailed"), "s3://b/k"), AlreadyExists)
    assert isinstance(classify(client_error("NoSuchKey"), "s3://b/k"), ObjectNotFound)
    assert isinstance(classify(client_error("AccessDenied"), "s3://b/k"), AccessDenied)
    assert "s3://b/k" in str(classify(client_error("InternalError"), "s3://b/k"))


class ReadOnlyStream:
    """A stream with ``read`` only (no ``readinto``), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1) -> bytes:
        size = min(size, 1000)  # short reads, as raw streams may return
        piece = self._data[self._at : self._at + size]
        self._at += len(piece)
        return piece


def test_sha256_stream_reads_into_one_buffer_or_by_read(store: Store) -> None:
    data = hashlib.sha256(b"x").digest() * 10_000  # 320 kB: many chunks of 64 kB
    expected = (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_stream(io.BytesIO(data), 64 * 1024) == expected
    assert sha256_stream(ReadOnlyStream(data), 64 * 1024) == expected  # type: ignore[arg-type]
    store.write_bytes("hashed.bin", data)
    with store.open_read("hashed.bin") as stream:
        stream.seek(100)
        assert sha256_stream(stream, 64 * 1024) == (
            hashlib.sha256(data[100:]).hexdigest(),
            len(data) - 100,
        ), "from the current position"
    assert store.sha256("hashed.bin") == expected[0]


def test_write_many_publishes_every_object(store: Store) -> None:
    import numpy as np

    shard = np.arange(3 * 64 * 64, dtype=np.uint64).view(np.uint8).reshape(3, -1)
    objects = {
        "p/zarr.json": b"{}",
        "p/0/c/0/0/0": shard,  # an encoder's buffer, written without a copy on local disk
        "p/0/c/0/0/1": bytearray(b"\x01" * 1000),
        "p/1/c/0/0/0": memoryview(b"level one"),
    }
    store.write_bytes("p/0/c/0/0/1", b"an older version")
    assert store.write_many(objects) is None
    assert [o.key for o in store.list("p")] == sorted(objects), "no temporary objects left"
    assert store.read_bytes("p/0/c/0/0/0") == shard.tobytes()
    assert store.read_bytes("p/0/c/0/0/1") == b"\x01" * 1000, "replaced whole"
    assert store.read_bytes("p/1/c/0/0/0") == b"level one"
    with pytest.raises(InvalidInput):
        store.write_many({"../outside": b"x"})


def test_write_many_replaces_objects_atomically_for_readers(store: Store) -> None:
    old, new = {f"c/{n}": b"A" * MiB for n in range(8)}, {f"c/{n}": b"B" * MiB for n in range(8)}
    store.write_many(old)
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                for key in old:
                    data = store.read_bytes(key)
                    assert data in (old[key], new[key]), "a whole object, never a mix"
                    seen.add(data[:1])
        except BaseException as err:  # surfaced in the test, not lost with the thread
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in (new, old, new):
            store.write_many(version)
        time.sleep(0.1)
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert seen and all(store.read_bytes(key) == data for key, data in new.items())


def test_write_many_refuses_to_replace_a_locked_local_file(local_store: Store) -> None:
    local_store.write_bytes("kept", b"1", retention=Retention("GOVERNANCE", datetime.now(UTC)))
    with pytest.raises(ObjectLocked):
        local_store.write_many({"kept": b"2"})
    assert local_store.read_bytes("kept") == b"1"


def test_remove_incomplete_sweeps_what_killed_writes_left(store: Store) -> None:
    store.write_many({"p/0/zarr.json": b"{}", "q/x": b"x"})
    if store.is_local:  # a killed process leaves temporary files; a killed PUT leaves nothing
        folder = Path(store.filesystem_path("p/0"))
        (folder / f"{TEMP_MARK}c.{'0' * 32}").write_bytes(b"half a shard")
        (folder / f"zarr.{'a1' * 16}.partial").write_bytes(b"half a document")  # zarr's own
        (Path(store.filesystem_path("q")) / f"{TEMP_MARK}y.{'1' * 32}").write_bytes(b"other")
        assert store.remove_incomplete("p") == 2
        assert sorted(p.name for p in folder.iterdir()) == ["zarr.json"]
        assert store.remove_incomplete() == 1, "the rest of the store"
        assert store.remove_incomplete("absent") == 0
    else:
        assert store.remove_incomplete("p") == 0
    assert [o.key for o in store.list()] == ["p/0/zarr.json", "q/x"]


def test_capabilities_say_what_the_backend_offers(store: Store) -> None:
    store.write_bytes("a/f.bin", b"file")
    if isinstance(store, LocalStore):
        assert store.is_local and not store.supports_versions and not store.supports_object_lock
        assert Path(store.filesystem_path("a/f.bin")).read_bytes() == b"file"
    else:
        assert not store.is_local and not store.supports_versions
        with pytest.raises(InvalidInput, match="not a file on this machine"):
            store.filesystem_path("a/f.bin")


@pytest.mark.s3
def test_a_versioned_bucket_says_so(s3_lock_store: Store) -> None:
    assert s3_lock_store.supports_versions and s3_lock_store.supports_object_lock
    first = s3_lock_store.write_bytes("v", b"1")
    s3_lock_store.write_bytes("v", b"2")
    assert first.version_id and s3_lock_store.read_bytes("v", first.version_id) == b"1"


class FlakyStream(io.BytesIO):
    """Fails its first ``failures`` reads (a dropped connection) after moving on by one byte,
    as a stream cut mid-read may."""

    def __init__(self, data: bytes, failures: int, error: Exception) -> None:
        super().__init__(data)
        self.failures, self.error = failures, error

    def read(self, size: int | None = -1) -> bytes:
        if self.failures:
            self.failures -= 1
            super().read(1)
            raise self.error
        return super().read(size)


def test_stream_failures_become_mira_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from mira.errors import StoreError, TransientStoreError
    from storage import errors
    from storage.errors import TranslatedReader

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.0)
    reset = ConnectionResetError("connection reset by peer")
    once = TranslatedReader(FlakyStream(b"0123456789", 1, reset), "s3://b/k", retry=True)
    once.seek(2)
    assert once.read(4) == b"2345", "retried from where the read began"
    always = TranslatedReader(FlakyStream(b"0123456789", 9, reset), "s3://b/k", retry=True)
    with pytest.raises(TransientStoreError, match="s3://b/k"):
        always.read()
    assert always.failures == 9 - errors.RETRY_ATTEMPTS, "three attempts, no more"
    broken = TranslatedReader(FlakyStream(b"x", 1, OSError(5, "I/O error")), "/data/k")
    with pytest.raises(StoreError, match="/data/k") as caught:
        broken.read()
    assert not isinstance(caught.value, TransientStoreError), "a disk error is not retried"
    with pytest.raises(ValueError):
        broken.seek(-1)  # a parser's bad offset stays a ValueError, not a storage error


def test_open_read_streams_behave_as_files(store: Store) -> None:
    store.write_bytes("s.bin", b"0123456789")
    with store.open_read("s.bin") as stream:
        assert stream.read(3) == b"012" and stream.seek(5) == 5 and stream.read() == b"56789"
        buffer = bytearray(4)
        stream.seek(0)
        assert stream.readinto(buffer) == 4 and bytes(buffer) == b"0123"
        assert stream.seek(0, io.SEEK_END) == 10 and stream.tell() == 10
    assert stream.closed
    with pytest.raises(ValueError):
        stream.read()  # as a closed file: a caller's mistake, not a storage failure


def zarr_roundtrip(store: Store) -> Any:
    import numpy as np
    import zarr

    array = zarr.create_array(
        store.zarr_store("z.zarr"), shape=(64, 64), chunks=(16, 16), dtype="uint8"
    )
    array[...] = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    return zarr.open_array(store.zarr_store("z.zarr", read_only=True), mode="r")


@pytest.mark.s3
def test_an_outage_mid_read_is_a_transient_error(
    s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 server goes away while a stream is open and while zarr reads: both surface as
    ``TransientStoreError`` (which Prefect retries), not as botocore's or aiohttp's errors."""
    from mira.errors import TransientStoreError
    from storage import errors

    with Relay(s3_server.config) as relay:
        store = open_store(f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}", relay.config)
        store.write_bytes("big.bin", b"x" * (4 * MiB))
        array = zarr_roundtrip(store)
        assert int(array[1, 1]) == 65
        stream = store.open_read("big.bin", block_size=MiB)
        assert stream.read(10) == b"x" * 10
        relay.cut()
        monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.01)
        with pytest.raises(TransientStoreError, match=r"big\.bin"):
            stream.read(2 * MiB)
        with pytest.raises(TransientStoreError, match=r"z\.zarr"):
            array[40:, 40:]
        with pytest.raises(TransientStoreError):
            store.write_many({"c/0": b"x", "c/1": b"y"})


@pytest.mark.s3
def test_each_request_is_tried_three_times_not_twenty_seven(
    s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries live in one layer per kind of failure: storage retries one request
    (``RETRY_ATTEMPTS``); s3fs and botocore do not retry it again underneath."""
    from mira.errors import TransientStoreError
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.01)
    with Relay(s3_server.config, busy=True) as relay:
        store = open_store(f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}", relay.config)
        with pytest.raises(TransientStoreError):
            store.read_bytes("k")
        assert relay.requests == errors.RETRY_ATTEMPTS
        with pytest.raises(TransientStoreError):
            store.write_many({"a": b"1"})
        assert relay.requests == 2 * errors.RETRY_ATTEMPTS


def test_open_object_splits_a_url_into_store_and_key(tmp_path: Path) -> None:
    store, key = open_object(tmp_path / "out" / "slide.ome.zarr")
    assert isinstance(store, LocalStore) and key == "slide.ome.zarr"
    assert store.url == str(tmp_path / "out")
    store.write_bytes(key, b"1")
    same, again = open_object(f"file://{tmp_path}/out/slide.ome.zarr/")
    assert (same.url, again, same.read_bytes(again)) == (store.url, key, b"1")
    here, name = open_object("slide.svs")
    assert here.url == str(Path.cwd()) and name == "slide.svs"
    s3, s3_key = open_object("s3://bucket/pre/fix/slide.svs")
    assert isinstance(s3, S3Store) and (s3.url, s3_key) == ("s3://bucket/pre/fix", "slide.svs")
    top, top_key = open_object("s3://bucket/slide.svs")
    assert (top.url, top_key) == ("s3://bucket", "slide.svs")
    for bad in ("s3://bucket", "s3://bucket/", "/", ".", "out/..", "file:///"):
        with pytest.raises(InvalidInput):
            open_object(bad)
    with pytest.raises(ConfigError, match="gs://"):
        open_object("gs://bucket/key")


@pytest.mark.s3
def test_open_object_reads_from_s3(s3_store: Store, s3_server: SeaweedServer) -> None:
    s3_store.write_bytes("slides/a.svs", b"slide")
    store, key = open_object(f"{s3_store.url}/slides/a.svs", s3_server.config)
    assert (store.url, key) == (f"{s3_store.url}/slides", "a.svs")
    assert store.read_bytes(key) == b"slide"

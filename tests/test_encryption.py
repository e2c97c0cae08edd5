"""Encryption at rest: every write through mira asks for server-side encryption, and the server's
own files on disk prove it. A marker written through mira is searched for in every file SeaweedFS
keeps (volumes, filer metadata): found when nothing encrypts (the control), absent with SSE-S3
(mira's default) and absent with SeaweedFS's volume encryption."""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mira.errors import ConfigError
from mira.settings import Settings
from storage import Store, open_store
from storage.s3 import PART_BYTES
from storage.security import encryption_status
from tests.seaweedfs import SeaweedServer

pytestmark = pytest.mark.s3


def marker() -> bytes:
    return f"MIRA-PLAINTEXT-MARKER-{uuid.uuid4().hex}".encode()


def body_with(mark: bytes, size: int = 64 * 1024) -> bytes:
    """Random bytes around the marker: nothing the server could compress the marker away in."""
    return os.urandom(size) + mark + os.urandom(size)


def on_disk(server: SeaweedServer, mark: bytes) -> list[Path]:
    return [path for path in server.stored_files() if mark in path.read_bytes()]


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs-plain")) as server:
        server.create_bucket("mira-sse")
        yield server


@pytest.fixture(scope="module")
def volume_encrypted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs-enc"), encrypt_volumes=True) as server:
        server.create_bucket("mira-sse")
        yield server


def writes(store: Store) -> dict[str, bytes]:
    """One object through each write path: a PUT, a multipart upload, a batch, a copy."""
    marks = {name: marker() for name in ("put", "multipart", "many", "copy")}
    store.write_bytes("put.bin", body_with(marks["put"]))
    store.write_stream("multipart.bin", io.BytesIO(body_with(marks["multipart"], PART_BYTES)))
    store.write_many({"many/0.bin": body_with(marks["many"])})
    store.write_bytes("source.bin", body_with(marks["copy"]))
    store.copy("source.bin", "copy.bin")
    store.delete("source.bin")
    return marks


def test_the_marker_is_on_disk_when_nothing_encrypts(plain_server: SeaweedServer) -> None:
    """The control: without SSE the bytes lie in the volume files as written, so the search
    below can see a marker."""
    config = dataclasses.replace(plain_server.config, sse=None)
    store = open_store(f"s3://mira-sse/plain-{uuid.uuid4().hex[:8]}", config)
    mark = marker()
    store.write_bytes("plain.bin", body_with(mark))
    assert on_disk(plain_server, mark)
    assert encryption_status(store).state == "off"


def test_sse_s3_by_default_leaves_no_plaintext_on_disk(plain_server: SeaweedServer) -> None:
    store = open_store(f"s3://mira-sse/sse-{uuid.uuid4().hex[:8]}", plain_server.config)
    assert plain_server.config.sse == "AES256"  # mira's default, as Settings gives it
    marks = writes(store)
    for name, mark in marks.items():
        assert on_disk(plain_server, mark) == [], name
    for key in ("put.bin", "multipart.bin", "many/0.bin", "copy.bin"):
        assert store.server_side_encryption(key) == "AES256", key  # type: ignore[attr-defined]
    assert marks["put"] in store.read_bytes("put.bin")  # the client reads plaintext back
    with store.open_read("multipart.bin") as stream:
        stream.seek(PART_BYTES)
        assert marks["multipart"] in stream.read()
    status = encryption_status(store)
    assert (status.state, status.requested, status.applied) == ("on", "AES256", "AES256")
    assert [o.key for o in store.list() if o.key.startswith(".mira-probe")] == []


def test_pyramid_chunks_are_encrypted(plain_server: SeaweedServer) -> None:
    """Zarr writes through s3fs directly: they carry the same request."""
    import numpy as np
    import zarr

    store = open_store(f"s3://mira-sse/zarr-{uuid.uuid4().hex[:8]}", plain_server.config)
    mark = marker()
    data = np.frombuffer(body_with(mark), dtype=np.uint8)
    array = zarr.create_array(
        store.zarr_store("p.zarr"),
        shape=data.shape,
        chunks=data.shape,
        dtype="u1",
        compressors=None,
    )
    array[:] = data
    assert on_disk(plain_server, mark) == []
    chunk = next(o.key for o in store.list("p.zarr") if "/c/" in o.key)
    assert store.server_side_encryption(chunk) == "AES256"  # type: ignore[attr-defined]


def test_volume_encryption_alone_leaves_no_plaintext(
    volume_encrypted_server: SeaweedServer,
) -> None:
    """SeaweedFS's ``-encryptVolumeData``: encrypted on disk though no request asks for it (and
    so invisible to a client: the probe cannot see it, which the docs say)."""
    config = dataclasses.replace(volume_encrypted_server.config, sse=None)
    store = open_store(f"s3://mira-sse/vol-{uuid.uuid4().hex[:8]}", config)
    mark = marker()
    store.write_bytes("v.bin", body_with(mark))
    assert store.read_bytes("v.bin").count(mark) == 1
    assert on_disk(volume_encrypted_server, mark) == []


def test_sse_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().s3_config().sse == "AES256"
    monkeypatch.setenv("MIRA_S3_SSE", "none")
    assert Settings().s3_config().sse is None
    monkeypatch.setenv("MIRA_S3_SSE", "aws:kms")
    monkeypatch.setenv("MIRA_S3_SSE_KMS_KEY_ID", "arn:aws:kms:eu-west-1:1:key/abc")
    config = Settings().s3_config()
    assert (config.sse, config.sse_kms_key_id) == ("aws:kms", "arn:aws:kms:eu-west-1:1:key/abc")
    from storage.security import sse_request_args

    assert sse_request_args(config) == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-west-1:1:key/abc",
    }
    monkeypatch.setenv("MIRA_S3_SSE", "rot13")
    with pytest.raises(ConfigError, match="unknown server-side encryption"):
        Settings(research_url="s3://b/p").research()


def test_a_local_folder_reports_unknown(tmp_path: Path) -> None:
    status = encryption_status(open_store(tmp_path))
    assert status.state == "unknown" and "disk" in status.detail

"""Encryption in transit: mira's S3 client verifies the endpoint's TLS certificate against the
configured CA bundle, and refuses plain http to anything but this machine unless told to."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mira.errors import ConfigError, StoreError, TransientStoreError
from mira.settings import Settings
from storage import S3Config, open_store
from storage.security import transport_status
from tests.seaweedfs import SeaweedServer, make_tls_files

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """``weed mini`` serving S3 over HTTPS with a certificate from a CA made for this session."""
    root = tmp_path_factory.mktemp("seaweedfs-tls")
    with SeaweedServer(root / "data", tls=make_tls_files(root / "tls")) as server:
        server.create_bucket("mira-tls")
        yield server


def test_https_endpoint_with_its_ca_reads_and_writes(https_server: SeaweedServer) -> None:
    assert https_server.config.endpoint_url and https_server.config.endpoint_url.startswith(
        "https://"
    )
    store = open_store(f"s3://mira-tls/t-{uuid.uuid4().hex[:8]}", https_server.config)
    store.write_bytes("a/b.bin", b"over tls")
    assert store.read_bytes("a/b.bin") == b"over tls"
    status = transport_status(store)
    assert status.state == "tls" and status.ca_bundle == https_server.config.ca_bundle


def test_settings_carry_the_ca_bundle(
    https_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = https_server.config
    for name, value in {
        "MIRA_RESEARCH_URL": "s3://mira-tls/settings",
        "MIRA_S3_ENDPOINT_URL": config.endpoint_url,
        "MIRA_S3_ACCESS_KEY_ID": config.access_key_id,
        "MIRA_S3_SECRET_ACCESS_KEY": config.secret_access_key,
        "MIRA_S3_REGION": "us-east-1",
        "MIRA_S3_CA_BUNDLE": config.ca_bundle,
    }.items():
        monkeypatch.setenv(name, str(value))
    research = Settings().research()
    research.write_bytes("k", b"1")
    assert research.exists("k")


def test_a_wrong_ca_fails_with_a_clear_error_and_no_retry(
    https_server: SeaweedServer, tmp_path: Path
) -> None:
    """The certificate is checked: another CA (or the system's) cannot verify it. The error
    names the endpoint and the setting, and is not a transient one that would be retried."""
    other_ca = make_tls_files(tmp_path / "other").ca
    for ca in (str(other_ca), None):
        config = dataclasses.replace(https_server.config, ca_bundle=ca)
        store = open_store("s3://mira-tls/wrong-ca", config)
        with pytest.raises(StoreError) as refused:
            store.write_bytes("k", b"must not arrive")
        assert not isinstance(refused.value, TransientStoreError)
        message = str(refused.value)
        assert "TLS verification failed" in message and "MIRA_S3_CA_BUNDLE" in message
        assert https_server.config.endpoint_url.split("//")[1] in message  # type: ignore[union-attr]
    assert not open_store("s3://mira-tls/wrong-ca", https_server.config).exists("k")


@pytest.mark.parametrize(
    "endpoint", ["http://s3.example.org:8333", "http://10.0.0.5:9000", "http://[2001:db8::1]:80"]
)
def test_plain_http_to_a_network_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"refusing plain http.*MIRA_S3_ALLOW_HTTP"):
        open_store("s3://bucket/prefix", S3Config(endpoint_url=endpoint))
    with pytest.raises(ConfigError, match="refusing plain http"):
        Settings(research_url="s3://bucket/p", s3_endpoint_url=endpoint).research()


def test_plain_http_is_allowed_on_loopback_or_by_setting() -> None:
    for endpoint in ("http://127.0.0.1:8333", "http://localhost:9000", "http://[::1]:80"):
        store = open_store("s3://bucket/p", S3Config(endpoint_url=endpoint))
        assert transport_status(store).state == "plain-loopback"
    allowed = Settings(
        research_url="s3://bucket/p", s3_endpoint_url="http://s3.lan:8333", s3_allow_http=True
    ).research()
    assert transport_status(allowed).state == "plain-allowed"


def test_ftp_like_endpoints_are_refused() -> None:
    with pytest.raises(ConfigError, match="neither http"):
        open_store("s3://bucket/p", S3Config(endpoint_url="ftp://127.0.0.1:21"))

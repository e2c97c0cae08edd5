"""Encryption in transit and at rest for S3 stores: which endpoints mira will talk to, what
server-side encryption every write asks for, and probes that report both (for ``mira doctor``).

A store on this machine's disk is the operating system's business (an encrypted volume):
mira cannot see it and says so.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from mira.errors import ConfigError, MiraError
from storage.base import S3Config, Store

SSE_MODES = ("AES256", "aws:kms")
PROBE_PREFIX = ".mira-probe"  # where the encryption probe writes (and removes) one tiny object
Verdict = Literal["on", "off", "unknown"]


@dataclass(frozen=True)
class EncryptionStatus:
    """What a store does with mira's bytes at rest, as measured by a probe write."""

    url: str
    state: Verdict
    requested: str | None  # what mira asks on every write (None: nothing)
    applied: str | None  # what the server says it applied to the probe object
    detail: str


@dataclass(frozen=True)
class TransportStatus:
    """How mira reaches a store: TLS verified against which CAs, or plain http."""

    endpoint: str | None
    state: Literal["tls", "plain-loopback", "plain-allowed", "local"]
    ca_bundle: str | None
    detail: str


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(config: S3Config) -> None:
    """Refuse settings that would send keys and data in clear text over a network: plain http
    to an endpoint that is not loopback, unless ``allow_http`` says so; and an unknown SSE mode."""
    if config.sse is not None and config.sse not in SSE_MODES:
        raise ConfigError(
            f"unknown server-side encryption {config.sse!r}: use AES256, aws:kms or none"
        )
    if config.sse_kms_key_id and config.sse != "aws:kms":
        raise ConfigError("MIRA_S3_SSE_KMS_KEY_ID is set but MIRA_S3_SSE is not aws:kms")
    if not config.endpoint_url:
        return  # AWS: botocore's https endpoints, verified against certifi's CAs
    parts = urlsplit(config.endpoint_url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"S3 endpoint {config.endpoint_url!r} is neither http:// nor https://")
    if parts.scheme == "http" and not config.allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"refusing plain http to {config.endpoint_url}: keys and data would cross the "
            "network unencrypted; use https (MIRA_S3_CA_BUNDLE for a private CA) or set "
            "MIRA_S3_ALLOW_HTTP=true"
        )


def client_tls_args(config: S3Config) -> dict[str, Any]:
    """botocore client arguments for TLS: the CA bundle that verifies the endpoint."""
    return {"verify": config.ca_bundle} if config.ca_bundle else {}


def sse_request_args(config: S3Config) -> dict[str, Any]:
    """Arguments that ask for server-side encryption; s3fs passes each to the calls that take
    it (PutObject, CreateMultipartUpload, CopyObject), so every write carries them."""
    if config.sse is None:
        return {}
    args: dict[str, Any] = {"ServerSideEncryption": config.sse}
    if config.sse == "aws:kms" and config.sse_kms_key_id:
        args["SSEKMSKeyId"] = config.sse_kms_key_id
    return args


def transport_status(store: Store) -> TransportStatus:
    """How ``store`` is reached; local folders are not reached over a network."""
    config: S3Config | None = getattr(store, "config", None)
    if store.is_local or config is None:
        return TransportStatus(None, "local", None, "a folder on this machine")
    endpoint = config.endpoint_url
    if not endpoint or endpoint.startswith("https://"):
        cas = config.ca_bundle or "the system's CAs (certifi)"
        return TransportStatus(endpoint, "tls", config.ca_bundle, f"TLS verified against {cas}")
    if is_loopback_host(urlsplit(endpoint).hostname):
        return TransportStatus(endpoint, "plain-loopback", None, "plain http on this machine")
    return TransportStatus(endpoint, "plain-allowed", None, "plain http allowed by setting")


def encryption_status(store: Store) -> EncryptionStatus:
    """Write one tiny object under ``.mira-probe/`` with mira's usual request, read back what the
    server applied, and remove it. A local folder is ``unknown``: only the operating system
    knows whether its disk is encrypted."""
    config: S3Config | None = getattr(store, "config", None)
    if store.is_local or config is None:
        return EncryptionStatus(
            store.url, "unknown", None, None, "a local folder: encrypt its disk (LUKS, BitLocker)"
        )
    requested = config.sse
    key = f"{PROBE_PREFIX}/encryption-{uuid.uuid4().hex}"
    try:
        store.write_bytes(key, b"mira encryption probe")
        applied = store.server_side_encryption(key)  # type: ignore[attr-defined]
        store.delete(key)
    except MiraError as err:
        return EncryptionStatus(store.url, "unknown", requested, None, f"probe failed: {err}")
    if applied:
        detail = f"the server encrypts new objects ({applied})"
        return EncryptionStatus(store.url, "on", requested, applied, detail)
    detail = (
        "the server reports no encryption for new objects"
        if requested is None
        else f"asked for {requested} but the server reports none"
    )
    return EncryptionStatus(store.url, "off", requested, None, detail)

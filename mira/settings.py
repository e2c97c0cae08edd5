"""One settings object for mira, read from ``MIRA_``-prefixed environment variables; flags override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mira.errors import ConfigError
from storage import S3Config, Store, open_store

MIN_SECRET_BYTES = 16


class Settings(BaseSettings):
    """Where mira's stores and engines are; every field has a ``MIRA_`` variable and a CLI flag."""

    model_config = SettingsConfigDict(env_prefix="MIRA_", extra="ignore", frozen=True)

    gateway_url: str = Field(
        "data/gateway",
        description="Gateway store (PHI side): drop zone and quarantine. A folder or s3://bucket/prefix.",
    )
    research_url: str = Field(
        "data/research",
        description="Research store (de-identified only). A folder or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for MinIO, Ceph, SeaweedFS...; empty means AWS."
    )
    s3_access_key_id: str | None = Field(
        None, validation_alias=AliasChoices("MIRA_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("MIRA_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_secret_access_key_file: Path | None = Field(
        None, description="File holding the S3 secret access key (when not in the environment)."
    )
    s3_region: str | None = Field(
        None, validation_alias=AliasChoices("MIRA_S3_REGION", "AWS_DEFAULT_REGION", "AWS_REGION")
    )
    s3_ca_bundle: Path | None = Field(
        None,
        validation_alias=AliasChoices("MIRA_S3_CA_BUNDLE", "AWS_CA_BUNDLE"),
        description="PEM file of the CA(s) that sign the S3 endpoint's TLS certificate (a private "
        "CA); empty: the system's CAs.",
    )
    s3_allow_http: bool = Field(
        False,
        description="Allow plain http to an S3 endpoint that is not loopback (keys and data "
        "unencrypted on the network).",
    )
    s3_sse: str = Field(
        "AES256",
        description="Server-side encryption asked on every S3 write: AES256 (SSE-S3), aws:kms "
        "(SSE-KMS) or none.",
    )
    s3_sse_kms_key_id: str | None = Field(
        None, description="KMS key id or ARN for aws:kms; empty: the account's default key."
    )
    audit: bool = Field(
        True,
        description="Append a record of every command and flow run to the research store's "
        "audit log (audit/).",
    )
    audit_retention_days: int = Field(
        3650,
        ge=0,
        description="Object Lock retention (COMPLIANCE) of each audit object where the research "
        "store supports it; 0: none.",
    )
    dask_address: str = Field(
        "",
        description="Scheduler address of an existing Dask cluster; empty starts a LocalCluster.",
    )
    dask_workers: int = Field(0, description="Workers of the LocalCluster; 0 means one per core.")
    ingest_max_decoded_bytes: int = Field(
        1024**3,
        gt=0,
        description="The most bytes ingest decodes to check one object (a slide tile, an inflated "
        "DICOM data set); an object that would decode to more is quarantined as decompression-bomb.",
    )
    prefect_api_url: str = Field(
        "",
        validation_alias=AliasChoices("MIRA_PREFECT_API_URL", "PREFECT_API_URL"),
        description="Prefect server API; empty runs flows on an ephemeral local server.",
    )
    deid_secret: SecretStr | None = Field(
        None, description="Key of the keyed pseudonyms (HMAC); stays on the gateway side."
    )
    deid_secret_file: Path | None = Field(None, description="File holding the pseudonym key.")
    deid_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the pseudonym key (for deployments: "
        "the server keeps it encrypted); read when neither MIRA_DEID_SECRET nor its file is set.",
    )
    deid_profile: Path | None = Field(
        None, description="De-identification profile file (JSON/YAML); empty: the default profile."
    )
    quality_config: Path | None = Field(
        None, description="Quality thresholds and suites override (YAML/JSON); empty: defaults."
    )
    cache_dir: Path | None = Field(
        None,
        description="Local cache of catalog parts read from a remote store; empty: ~/.cache/mira.",
    )
    webhook_urls: str = Field(
        "", description="Comma-separated URLs that receive a JSON POST when a pipeline run ends."
    )

    def with_overrides(self, **flags: Any) -> Settings:
        """Return a copy where every flag that was given (not None) replaces the setting."""
        given = {name: value for name, value in flags.items() if value is not None}
        return self.model_copy(update=given) if given else self

    def s3_config(self) -> S3Config:
        """The S3 connection details the storage layer needs."""
        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        if secret is None and self.s3_secret_access_key_file is not None:
            setting = "MIRA_S3_SECRET_ACCESS_KEY_FILE"
            raw = _read_secret_file(self.s3_secret_access_key_file, setting)
            try:
                secret = raw.decode()
            except UnicodeDecodeError:
                raise ConfigError(f"{setting} {self.s3_secret_access_key_file}: not text") from None
        return S3Config(
            endpoint_url=self.s3_endpoint_url or None,
            access_key_id=self.s3_access_key_id,
            secret_access_key=secret,
            region=self.s3_region,
            cache_dir=str(self.cache_dir) if self.cache_dir else None,
            ca_bundle=str(self.s3_ca_bundle) if self.s3_ca_bundle else None,
            allow_http=self.s3_allow_http,
            sse=None if self.s3_sse.lower() in ("", "none", "off") else self.s3_sse,
            sse_kms_key_id=self.s3_sse_kms_key_id or None,
        )

    def gateway(self) -> Store:
        """The gateway store (PHI side), opened with these settings' S3 connection."""
        return self.store(self.gateway_url)

    def research(self) -> Store:
        """The research store (de-identified only), opened with these settings' S3 connection."""
        return self.store(self.research_url)

    def store(self, url: str | Path) -> Store:
        """Any other store (a ``mira deid`` output, an export target) with the same connection."""
        return open_store(url, self.s3_config())

    def deid_key(self) -> bytes:
        """The pseudonym key as bytes; fails with a clear message when none is configured."""
        if self.deid_secret is not None:
            key = self.deid_secret.get_secret_value().encode()
        elif self.deid_secret_file is not None:
            key = _read_secret_file(self.deid_secret_file, "MIRA_DEID_SECRET_FILE")
        elif self.deid_secret_block is not None:
            key = _read_secret_block(self.deid_secret_block, "MIRA_DEID_SECRET_BLOCK").encode()
        else:
            raise ConfigError(
                "no de-identification secret: set MIRA_DEID_SECRET, MIRA_DEID_SECRET_FILE or "
                "MIRA_DEID_SECRET_BLOCK"
            )
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the de-identification secret must be at least {MIN_SECRET_BYTES} bytes"
            )
        return key

    def webhooks(self) -> list[str]:
        """The configured webhook URLs, in order."""
        return [url.strip() for url in self.webhook_urls.split(",") if url.strip()]


def _read_secret_file(path: Path, setting: str) -> bytes:
    """A secret kept in a file (a mounted Kubernetes or Docker secret), surrounding whitespace
    stripped. The error names the file and why it failed, never the content."""
    try:
        return path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"cannot read {setting} {path}: {err.strerror}") from None


def _read_secret_block(name: str, setting: str) -> str:
    """The value of the Prefect Secret block ``name``, from the server at PREFECT_API_URL."""
    from prefect.blocks.system import Secret

    try:
        block: Secret = Secret.load(name, _sync=True)  # type: ignore[call-arg,assignment]
        value = block.get()
    except ValueError as err:  # Prefect: no block document of that name
        raise ConfigError(f"{setting}: no Prefect Secret block named {name!r}") from err
    if not isinstance(value, str):
        raise ConfigError(f"{setting}: the Prefect Secret block {name!r} does not hold text")
    return value.strip()


def load_settings(**flags: Any) -> Settings:
    """Settings from the environment, with command-line flags (non-None values) on top."""
    return Settings().with_overrides(**flags)

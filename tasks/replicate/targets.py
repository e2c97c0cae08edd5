"""Remote targets from the environment: each with its own URL, endpoint and credentials.

``MIRA_REPLICATE_TARGETS`` names the targets, ``name=s3://bucket/prefix`` separated by commas;
each target ``NAME`` reads ``MIRA_REMOTE_<NAME>_ENDPOINT_URL``, ``..._ACCESS_KEY_ID``,
``..._SECRET_ACCESS_KEY``, ``..._REGION`` and ``..._CA_BUNDLE`` (``NAME`` upper-cased, ``-`` and
``.`` as ``_``). A target never borrows the site's credentials: the remote's identity may write
there and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from mira.errors import ConfigError
from storage import S3Config, is_s3_url
from tasks.replicate.progress import check_target_name
from tasks.replicate.replicator import RemoteTarget

TARGETS_ENV = "MIRA_REPLICATE_TARGETS"
FIELDS = {
    "ENDPOINT_URL": "endpoint_url",
    "ACCESS_KEY_ID": "access_key_id",
    "SECRET_ACCESS_KEY": "secret_access_key",
    "REGION": "region",
    "CA_BUNDLE": "ca_bundle",
    "SSE": "sse",
    "SSE_KMS_KEY_ID": "sse_kms_key_id",
}
FLAGS = {"ALLOW_HTTP": "allow_http"}  # true/false


def target_env_prefix(name: str) -> str:
    return "MIRA_REMOTE_" + name.upper().replace("-", "_").replace(".", "_") + "_"


def parse_target_spec(spec: str) -> tuple[str, str]:
    """``name=s3://bucket/prefix`` -> (name, url)."""
    name, sep, url = spec.strip().partition("=")
    if not sep or not name or not url:
        raise ConfigError(f"replication target {spec!r}: write it as name=s3://bucket/prefix")
    if not is_s3_url(url):
        raise ConfigError(f"replication target {name}: {url!r} is not an s3:// URL")
    return check_target_name(name), url


def targets_from(specs: list[str], environ: Mapping[str, str]) -> list[RemoteTarget]:
    """The targets named by ``specs`` (or by ``MIRA_REPLICATE_TARGETS`` when empty), each with
    its own endpoint and credentials from ``environ``."""
    if not specs:
        specs = [s for s in environ.get(TARGETS_ENV, "").split(",") if s.strip()]
    if not specs:
        raise ConfigError(
            f"no replication target: set {TARGETS_ENV}=name=s3://bucket/prefix or pass --target"
        )
    known = {f.name for f in dataclasses.fields(S3Config)}
    targets = []
    for spec in specs:
        name, url = parse_target_spec(spec)
        prefix = target_env_prefix(name)
        values = {
            field: environ[prefix + suffix]
            for suffix, field in FIELDS.items()
            if environ.get(prefix + suffix) and field in known
        }
        flags = {
            field: environ[prefix + suffix].strip().lower() in ("1", "true", "yes")
            for suffix, field in FLAGS.items()
            if environ.get(prefix + suffix) and field in known
        }
        if not values.get("access_key_id") or not values.get("secret_access_key"):
            raise ConfigError(
                f"replication target {name} has no credentials of its own: set "
                f"{prefix}ACCESS_KEY_ID and {prefix}SECRET_ACCESS_KEY"
            )
        targets.append(RemoteTarget(name, url, S3Config(**values, **flags)))  # type: ignore[arg-type]
    if len({t.name for t in targets}) != len(targets):
        raise ConfigError("replication target names must differ")
    return targets


def target_environment(target: RemoteTarget) -> dict[str, str]:
    """The variables that describe ``target`` (for a worker, a subprocess, a test)."""
    prefix = target_env_prefix(target.name)
    env = {}
    for suffix, field in FIELDS.items():
        value = getattr(target.s3, field, None)
        if value:
            env[prefix + suffix] = str(value)
    return env

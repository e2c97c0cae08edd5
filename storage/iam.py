"""Access permissions as the object store's own controls: IAM users, keys and policy documents.

``policy_document`` turns store-neutral permissions (``mira.access.Permission``-like records:
a store URL, a prefix, actions) into an AWS-style IAM policy document. The same document is
what ``mira access apply --format aws`` writes out for AWS S3 or MinIO, and what
``IdentityAdmin`` puts on SeaweedFS through its embedded IAM API (``weed mini``/``weed s3`` with
``-s3.iam.readOnly=false``), which evaluates prefix conditions itself.

A principal ``NAME`` is the IAM user ``mira-NAME``; users without that prefix are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mira.errors import AccessDenied, ConfigError, ObjectNotFound, StoreError
from storage.base import S3Config
from storage.security import check_endpoint, client_tls_args

USER_PREFIX = "mira-"
POLICY_NAME = "mira-access"
BUCKET_METADATA = ("s3:GetBucketVersioning", "s3:GetBucketObjectLockConfiguration")
S3_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "read": ("s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention"),
    "write": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "delete": ("s3:DeleteObject", "s3:DeleteObjectVersion"),
    "lock": ("s3:PutObjectRetention",),
}
LIST_ACTIONS = ("s3:ListBucket", "s3:ListBucketVersions")
CONFIGURE_ACTIONS = (
    "s3:GetBucketVersioning",
    "s3:PutBucketVersioning",
    "s3:GetBucketObjectLockConfiguration",
    "s3:PutBucketObjectLockConfiguration",
)  # SeaweedFS 4.48 refuses s3:*EncryptionConfiguration in a policy document


class PermissionLike(Protocol):
    """What ``policy_document`` needs of a permission (``mira.access.Permission``)."""

    @property
    def store(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def actions(self) -> frozenset[str]: ...
    @property
    def list_bare(self) -> bool: ...


@dataclass(frozen=True)
class Credentials:
    """One access key of one principal. ``secret_access_key`` is never logged or printed."""

    principal: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class Identity:
    """A mira-managed user as the server describes it."""

    principal: str
    access_key_ids: tuple[str, ...]
    policy: dict[str, Any] | None


def user_name(principal: str) -> str:
    """The IAM user of a principal."""
    return USER_PREFIX + principal


def _bucket_and_key(store: str, prefix: str) -> tuple[str, str]:
    if not store.startswith("s3://"):
        raise ConfigError(
            f"{store} is a folder: only an S3 store has identities and policies to apply"
        )
    bucket, _, base = store.removeprefix("s3://").partition("/")
    base = base.strip("/")
    # plain concatenation: a prefix's trailing "/" must survive, or "dicom/PA/" would also
    # grant "dicom/PAX/..."
    return bucket, f"{base}/{prefix}" if base else prefix


def policy_document(granted: Iterable[PermissionLike]) -> dict[str, Any]:
    """The AWS IAM policy document that allows exactly ``granted`` (deny by default)."""
    statements: list[dict[str, Any]] = []
    buckets: set[str] = set()
    for permission in granted:
        bucket, key = _bucket_and_key(permission.store, permission.prefix)
        buckets.add(bucket)
        bare = permission.list_bare and key.endswith("/")
        statements.extend(_statements(bucket, key, permission.actions, bare))
    if buckets:
        statements.append(
            _statement(list(BUCKET_METADATA), [f"arn:aws:s3:::{b}" for b in sorted(buckets)])
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _statements(
    bucket: str, key: str, actions: frozenset[str], list_bare: bool = False
) -> list[dict[str, Any]]:
    objects = f"arn:aws:s3:::{bucket}/{key}*"
    listed = [f"{key}*", key.removesuffix("/")] if list_bare else [f"{key}*"]
    condition = {"StringLike": {"s3:prefix": listed}} if key else None
    if "admin" in actions:
        return [_statement(["s3:*"], [objects]), _statement(["s3:*"], [f"arn:aws:s3:::{bucket}"])]
    found: list[dict[str, Any]] = []
    if "configure" in actions:
        found.append(_statement(list(CONFIGURE_ACTIONS), [f"arn:aws:s3:::{bucket}"]))
    if "list" in actions:
        found.append(_statement(list(LIST_ACTIONS), [f"arn:aws:s3:::{bucket}"], condition))
    object_actions = [a for name in sorted(actions) for a in S3_ACTIONS.get(name, ())]
    if object_actions:
        found.append(_statement(object_actions, [objects]))
    return found


def _statement(
    actions: list[str], resources: list[str], condition: dict[str, Any] | None = None
) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def normalized(document: Mapping[str, Any]) -> list[str]:
    """A policy document in a canonical form (single values as lists, sorted), to compare the
    document mira wants with the one a server returns."""

    def as_list(value: Any) -> list[Any]:
        return sorted(value) if isinstance(value, list) else [value]

    canonical = []
    for statement in document.get("Statement", []):
        condition = {
            operator: {k: as_list(v) for k, v in sorted(tests.items())}
            for operator, tests in sorted(statement.get("Condition", {}).items())
        }
        canonical.append(
            json.dumps(
                {
                    "Effect": statement.get("Effect"),
                    "Action": as_list(statement.get("Action", [])),
                    "Resource": as_list(statement.get("Resource", [])),
                    "Condition": condition,
                },
                sort_keys=True,
            )
        )
    return sorted(canonical)


def write_credentials(folder: Path, credentials: Credentials) -> Path:
    """``folder/<principal>.env`` (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=...), created
    with mode 0600 and replaced atomically; the folder is made 0700 when mira creates it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{credentials.principal}.env"
    temporary = folder / f".{credentials.principal}.{secrets.token_hex(4)}.tmp"
    text = (
        f"AWS_ACCESS_KEY_ID={credentials.access_key_id}\n"
        f"AWS_SECRET_ACCESS_KEY={credentials.secret_access_key}\n"
    )
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    temporary.replace(path)
    return path


def read_credentials(path: Path) -> Credentials:
    """The credentials ``write_credentials`` wrote."""
    values = dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line.strip()
    )
    try:
        return Credentials(
            path.name.removesuffix(".env"),
            values["AWS_ACCESS_KEY_ID"],
            values["AWS_SECRET_ACCESS_KEY"],
        )
    except KeyError as err:
        raise ConfigError(f"{path} holds no {err.args[0]}") from None


class IdentityAdmin:
    """The server's IAM API, with the credentials of whoever may manage identities."""

    def __init__(self, config: S3Config) -> None:
        import botocore.session
        from botocore.config import Config

        check_endpoint(config)
        self._client = botocore.session.get_session().create_client(
            "iam",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name=config.region or "us-east-1",
            **client_tls_args(config),
            config=Config(retries={"total_max_attempts": 2, "mode": "standard"}),
        )

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            detail = err.response.get("Error", {}).get("Message", "")
            message = f"IAM {method} refused ({code}: {detail})"
            if code == "NoSuchEntity":
                raise ObjectNotFound(f"{message}: {kwargs.get('UserName', '')}") from err
            if code in ("AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch"):
                raise AccessDenied(f"{message}: are these the identity admin's keys?") from err
            raise StoreError(message) from err
        except BotoCoreError as err:
            raise StoreError(f"IAM {method} failed: {type(err).__name__}") from err

    def principals(self) -> list[str]:
        """Every principal that has a mira-managed user on the server."""
        names: list[str] = []
        marker: dict[str, str] = {}
        while True:
            page = self._call("list_users", **marker)
            names += [u["UserName"] for u in page.get("Users", [])]
            if not page.get("IsTruncated"):
                break
            marker = {"Marker": page["Marker"]}
        return sorted(n.removeprefix(USER_PREFIX) for n in names if n.startswith(USER_PREFIX))

    def identity(self, principal: str) -> Identity:
        """Keys and policy of one principal's user; ``ObjectNotFound`` when it has none."""
        user = user_name(principal)
        self._call("get_user", UserName=user)
        keys = self._call("list_access_keys", UserName=user).get("AccessKeyMetadata", [])
        try:
            document = self._call("get_user_policy", UserName=user, PolicyName=POLICY_NAME)
            policy = document["PolicyDocument"]
            if isinstance(policy, str):
                policy = json.loads(policy)
        except ObjectNotFound:
            policy = None
        return Identity(principal, tuple(k["AccessKeyId"] for k in keys), policy)

    def ensure_user(self, principal: str) -> bool:
        """Create the principal's user unless it exists; whether it was created."""
        try:
            self._call("get_user", UserName=user_name(principal))
            return False
        except ObjectNotFound:
            self._call("create_user", UserName=user_name(principal))
            return True

    def put_policy(self, principal: str, document: Mapping[str, Any]) -> None:
        """Replace the principal's policy with ``document``."""
        self._call(
            "put_user_policy",
            UserName=user_name(principal),
            PolicyName=POLICY_NAME,
            PolicyDocument=json.dumps(document),
        )

    def create_key(self, principal: str) -> Credentials:
        """A new access key for the principal."""
        key = self._call("create_access_key", UserName=user_name(principal))["AccessKey"]
        return Credentials(principal, key["AccessKeyId"], key["SecretAccessKey"])

    def delete_key(self, principal: str, access_key_id: str) -> None:
        """Delete one key: the server refuses it from now on."""
        self._call("delete_access_key", UserName=user_name(principal), AccessKeyId=access_key_id)

    def rotate(self, principal: str, credentials_dir: Path) -> tuple[Credentials, Path]:
        """A new key for the principal, written to ``credentials_dir``; only then is every
        older key deleted, so a failed write never leaves the principal without a usable key."""
        old = self.identity(principal).access_key_ids
        fresh = self.create_key(principal)
        path = write_credentials(credentials_dir, fresh)
        for key_id in old:
            self.delete_key(principal, key_id)
        return fresh, path

    def remove(self, principal: str) -> None:
        """Delete the principal's keys, policy and user; a missing user is already removed."""
        try:
            identity = self.identity(principal)
        except ObjectNotFound:
            return
        for key_id in identity.access_key_ids:
            self.delete_key(principal, key_id)
        if identity.policy is not None:
            self._call("delete_user_policy", UserName=user_name(principal), PolicyName=POLICY_NAME)
        self._call("delete_user", UserName=user_name(principal))


@dataclass
class ApplyReport:
    """What ``apply_documents`` changed on the server."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    credentials: dict[str, Path] = field(default_factory=dict)


def apply_documents(
    admin: IdentityAdmin, documents: Mapping[str, Mapping[str, Any]], credentials_dir: Path
) -> ApplyReport:
    """Make the server's mira-managed users exactly ``documents`` (principal -> policy):
    create missing users with a key (written to ``credentials_dir``), replace changed policies,
    remove users the policy no longer names. Running it twice changes nothing the second time."""
    report = ApplyReport()
    for principal, document in sorted(documents.items()):
        if admin.ensure_user(principal):
            report.created.append(principal)
        identity = admin.identity(principal)
        if identity.policy is None or normalized(identity.policy) != normalized(document):
            admin.put_policy(principal, document)
            if principal not in report.created:
                report.updated.append(principal)
        if not identity.access_key_ids:
            credentials = admin.create_key(principal)
            report.credentials[principal] = write_credentials(credentials_dir, credentials)
    for principal in admin.principals():
        if principal not in documents:
            admin.remove(principal)
            report.removed.append(principal)
    return report

"""Who may do what to which store: cohorts, roles and principals, from one policy file.

The policy is the single source of truth for access. This module validates it and turns it
into store-neutral permissions (a store URL, a key prefix, a set of actions); ``storage.iam``
turns those into the object store's own identities and policy documents, so that the server,
not mira, refuses what a role may not do. Nothing here touches a store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mira.audit import AUDIT_PREFIX
from mira.errors import ConfigError
from tasks import layout

Action = Literal["list", "read", "write", "delete", "lock", "configure", "admin"]
PRINCIPAL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_COHORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
READ: frozenset[Action] = frozenset({"list", "read"})


class Role(StrEnum):
    """What a principal is for; each role's rights are fixed here, not in the file."""

    PIPELINE = "pipeline"
    CURATOR = "curator"
    READER = "reader"
    ADMIN = "admin"


ROLE_SUMMARY: Mapping[Role, str] = {
    Role.PIPELINE: "reads, writes and deletes the gateway; reads, writes, deletes and locks the "
    "research store. The only role that reads the gateway (PHI) or writes research data.",
    Role.CURATOR: "reads the whole research store; writes only review decisions "
    f"({layout.CATALOG}/review/), splits ({layout.CATALOG}/splits/), snapshots "
    f"({layout.SNAPSHOTS}/) and audit records ({AUDIT_PREFIX}/); locks any research object "
    "(a lock only grows); deletes nothing; no gateway access.",
    Role.READER: "lists and reads its cohorts' prefixes and snapshots, and appends to the "
    f"audit log ({AUDIT_PREFIX}/); writes and deletes nothing else; no gateway access.",
    Role.ADMIN: "every S3 action on the research store; on the gateway only the bucket's "
    "settings (versioning, Object Lock), neither its keys nor its objects; cannot "
    "shorten a COMPLIANCE retention (the server refuses everyone).",
}


class Cohort(BaseModel):
    """A set of research-store prefixes and snapshots, e.g. one collection, project or site.

    ``store`` names another research store (a bucket per site or project) when the cohort does
    not live in the configured one; an empty prefix list with no snapshots is refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    store: str | None = Field(
        None, description="s3://bucket/prefix of the cohort's research store; empty: the default."
    )
    prefixes: list[str] = Field(
        default_factory=list,
        description="Key prefixes below the store, e.g. 'dicom/<patient>/'; '' is the whole store.",
    )
    snapshots: list[str] = Field(default_factory=list, description="Snapshot names.")

    @field_validator("prefixes")
    @classmethod
    def _relative_prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            parts = prefix.split("/")
            if prefix.startswith("/") or ".." in parts or "*" in prefix or "?" in prefix:
                raise ValueError(f"prefix {prefix!r} must be relative, without '..' or wildcards")
        return prefixes

    @field_validator("snapshots")
    @classmethod
    def _snapshot_names(cls, names: list[str]) -> list[str]:
        for name in names:
            layout.check_snapshot_name(name)
        return names

    @field_validator("store")
    @classmethod
    def _s3_store(cls, store: str | None) -> str | None:
        if store is not None and not store.startswith("s3://"):
            raise ValueError(f"cohort store {store!r} must be an s3:// URL")
        return store

    @model_validator(mode="after")
    def _not_empty(self) -> Cohort:
        if not self.prefixes and not self.snapshots:
            raise ValueError("a cohort needs at least one prefix or snapshot")
        return self


class Principal(BaseModel):
    """One identity: a person or a service, bound to a role (and cohorts, for a reader)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    cohorts: list[str] = Field(default_factory=list, description="Cohorts of a reader.")
    description: str = ""


class AccessPolicy(BaseModel):
    """The policy file: cohorts by name, principals by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    cohorts: dict[str, Cohort] = Field(default_factory=dict)
    principals: dict[str, Principal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> AccessPolicy:
        for name in self.cohorts:
            if not _COHORT_NAME.match(name):
                raise ValueError(f"cohort name {name!r}: use letters, digits, '.', '_', '-'")
        for name, principal in self.principals.items():
            if not PRINCIPAL_NAME.match(name):
                raise ValueError(
                    f"principal name {name!r}: lower-case letters, digits, '_', '-' (max 48)"
                )
            unknown = [c for c in principal.cohorts if c not in self.cohorts]
            if unknown:
                raise ValueError(f"principal {name!r} names unknown cohorts {unknown}")
            if principal.role is Role.READER and not principal.cohorts:
                raise ValueError(f"reader {name!r} needs at least one cohort")
            if principal.role is not Role.READER and principal.cohorts:
                raise ValueError(f"only readers have cohorts; {name!r} is {principal.role.value}")
        return self

    def with_principal(self, name: str, principal: Principal) -> AccessPolicy:
        """A copy where ``name`` is bound to ``principal`` (added or replaced), validated."""
        return _validated({**self.dump(), "principals": {**self._principals(), name: principal}})

    def without_principal(self, name: str) -> AccessPolicy:
        """A copy without ``name``; an error when the policy does not name it."""
        if name not in self.principals:
            raise ConfigError(f"the policy has no principal {name!r}")
        principals = {k: v for k, v in self._principals().items() if k != name}
        return _validated({**self.dump(), "principals": principals})

    def _principals(self) -> dict[str, Any]:
        return {k: v.model_dump(mode="json") for k, v in self.principals.items()}

    def dump(self) -> dict[str, Any]:
        """The policy as plain data, defaults left out (what ``save_policy`` writes)."""
        return self.model_dump(mode="json", exclude_defaults=True) | {"version": self.version}


@dataclass(frozen=True)
class Permission:
    """``actions`` on every key of ``store`` that starts with ``prefix`` ('' is all of it)."""

    store: str
    prefix: str
    actions: frozenset[Action]
    # also list the prefix named without its trailing "/", as mira's store.list("audit") asks;
    # only for folders no other key name starts with (audit/), never for cohorts' prefixes,
    # where "snapshots/a" would also list "snapshots/a2/"
    list_bare: bool = False


@dataclass(frozen=True)
class Stores:
    """The two zones' store URLs the policy is applied to."""

    gateway: str
    research: str


def policy_schema() -> dict[str, Any]:
    """The JSON schema of the policy file (``mira access schema``)."""
    return AccessPolicy.model_json_schema()


def _validated(data: Any, source: str = "access policy") -> AccessPolicy:
    try:
        return AccessPolicy.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid {source}: {problems}") from None


def load_policy(path: Path) -> AccessPolicy:
    """Read and validate a policy file (YAML or JSON)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read access policy {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"access policy {path} is not valid YAML: {err}") from None
    return _validated(data or {}, f"access policy {path}")


def save_policy(policy: AccessPolicy, path: Path) -> None:
    """Write ``policy`` to ``path`` as YAML, atomically (comments of the old file are lost)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(policy.dump(), sort_keys=False))
    temporary.replace(path)


def permissions(policy: AccessPolicy, stores: Stores) -> dict[str, tuple[Permission, ...]]:
    """Every principal's permissions, by principal name; an error when a cohort's store
    overlaps the gateway (a reader would see PHI)."""
    for name, cohort in policy.cohorts.items():
        if cohort.store and _overlaps(cohort.store, stores.gateway):
            raise ConfigError(f"cohort {name!r}: its store {cohort.store} overlaps the gateway")
    return {
        name: tuple(role_permissions(principal, policy.cohorts, stores))
        for name, principal in policy.principals.items()
    }


def role_permissions(
    principal: Principal, cohorts: Mapping[str, Cohort], stores: Stores
) -> Iterable[Permission]:
    """What one principal may do, from its role (and cohorts)."""
    if principal.role is Role.ADMIN:
        # The gateway's keys and objects are PHI: an admin configures that bucket, never reads it.
        yield Permission(stores.gateway, "", frozenset({"configure"}))
        yield Permission(stores.research, "", frozenset({"admin"}))
    elif principal.role is Role.PIPELINE:
        everything: frozenset[Action] = frozenset({"list", "read", "write", "delete"})
        yield Permission(stores.gateway, "", everything)
        yield Permission(stores.research, "", everything | {"lock"})
    elif principal.role is Role.CURATOR:
        # lock on everything: a snapshot locks every object version it lists; the server lets
        # a lock grow only, and the curator has no bypass of GOVERNANCE
        yield Permission(stores.research, "", READ | {"lock"})
        yield audit_permission(stores)
        for prefix in (f"{layout.CATALOG}/review/", f"{layout.CATALOG}/splits/"):
            yield Permission(stores.research, prefix, frozenset({"write"}))
        yield Permission(stores.research, f"{layout.SNAPSHOTS}/", frozenset({"write"}))
    else:
        yield audit_permission(stores)
        for cohort_name in principal.cohorts:
            yield from cohort_permissions(cohorts[cohort_name], stores.research)


def audit_permission(stores: Stores) -> Permission:
    """Every mira command appends its record to the research store's audit log (``mira.audit``):
    it lists the log, reads the last object (the chain's previous hash) and writes the next one
    under a lock. So every role may do that in ``audit/``, and the log shows other cohorts'
    keys to a reader (docs/security.md); an overwrite leaves the locked version, which
    ``mira audit verify`` reports."""
    return Permission(
        stores.research,
        f"{AUDIT_PREFIX}/",
        frozenset({"list", "read", "write", "lock"}),
        list_bare=True,
    )


def cohort_permissions(cohort: Cohort, default_store: str) -> Iterable[Permission]:
    """List and read on a cohort's prefixes, its snapshots' folders and index records."""
    store = cohort.store or default_store
    for prefix in cohort.prefixes:
        yield Permission(store, prefix, READ)
    for name in cohort.snapshots:
        yield Permission(store, layout.snapshot_folder(name) + "/", READ)
        yield Permission(store, layout.snapshot_index_key(name), READ)


def _overlaps(url: str, other: str) -> bool:
    """Whether two store URLs share keys: the same bucket, one prefix inside the other."""
    if not (url.startswith("s3://") and other.startswith("s3://")):
        return url.rstrip("/") == other.rstrip("/")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    other_bucket, _, other_prefix = other.removeprefix("s3://").partition("/")
    first, second = prefix.strip("/") + "/", other_prefix.strip("/") + "/"
    inside = first.startswith(second) or second.startswith(first) or "/" in (first, second)
    return bucket == other_bucket and inside


def readers_of(policy: AccessPolicy, stores: Stores, store: str) -> list[str]:
    """The principals that may read anything in ``store`` (for ``mira doctor``'s gateway line)."""
    return sorted(
        name
        for name, granted in permissions(policy, stores).items()
        if any(p.store == store and p.actions & {"read", "admin"} for p in granted)
    )

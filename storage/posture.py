"""What a store does to keep objects: versioning, Object Lock and its default retention, as
the server reports them (for ``mira doctor``). A local folder keeps no versions and cannot be
write-once; it says so instead of guessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mira.errors import MiraError
from storage.base import Store

VersioningState = Literal["enabled", "suspended", "off", "unknown"]


@dataclass(frozen=True)
class Protection:
    """Versioning and Object Lock of the bucket behind a store."""

    url: str
    local: bool
    versioning: VersioningState
    object_lock: bool | None  # None: could not be read
    default_retention: str | None  # e.g. "COMPLIANCE 30 days"; None: no default rule
    detail: str = ""


def protection(store: Store) -> Protection:
    """Read the bucket's versioning and Object Lock configuration (a folder has neither)."""
    from storage.s3 import S3Store

    if not isinstance(store, S3Store):
        return Protection(store.url, True, "off", False, None, "a local folder")
    try:
        status = store._call("get_bucket_versioning", "").get("Status")
    except MiraError as err:
        return Protection(store.url, False, "unknown", None, None, f"cannot read: {err}")
    versioning: VersioningState = {"Enabled": "enabled", "Suspended": "suspended"}.get(
        status or "", "off"
    )  # type: ignore[assignment]
    try:
        config = store._call("get_object_lock_configuration", "")["ObjectLockConfiguration"]
    except (FileNotFoundError, KeyError):
        return Protection(store.url, False, versioning, False, None)
    except MiraError as err:
        return Protection(store.url, False, versioning, None, None, f"cannot read: {err}")
    rule = config.get("Rule", {}).get("DefaultRetention")
    default = None
    if rule:
        count, unit = (rule["Days"], "day") if "Days" in rule else (rule.get("Years"), "year")
        span = f"{count} {unit}" + ("" if count == 1 else "s")
        default = f"{rule.get('Mode')} {span}"
    return Protection(
        store.url, False, versioning, config.get("ObjectLockEnabled") == "Enabled", default
    )

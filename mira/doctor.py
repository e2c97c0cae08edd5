"""``mira doctor``: the security posture of the configured stores and Prefect server, one
verdict per line (pass, warn, fail), measured on the servers rather than read from settings
where a server can be asked."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import urlsplit

from mira.access import AccessPolicy, Role, Stores, permissions, readers_of
from mira.errors import MiraError, ObjectNotFound
from mira.settings import Settings
from storage import Store

Status = Literal["pass", "warn", "fail"]
PREFECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    check: str
    target: str
    status: Status
    detail: str

    def row(self) -> dict[str, str]:
        return asdict(self)


def examine(settings: Settings, policy: AccessPolicy | None) -> list[Check]:
    """Every check, stores first, then access, then Prefect."""
    stores = {"gateway": settings.gateway(), "research": settings.research()}
    checks: list[Check] = []
    for zone, store in stores.items():
        checks += store_checks(zone, store)
    checks += access_checks(settings, policy, stores)
    checks += prefect_checks(settings)
    return checks


def failed(checks: Iterable[Check]) -> bool:
    """Whether any line failed (``mira doctor`` then exits 1)."""
    return any(check.status == "fail" for check in checks)


def store_checks(zone: str, store: Store) -> Iterator[Check]:
    """Transport, encryption at rest, versioning and (research) Object Lock of one store."""
    from storage.posture import protection
    from storage.security import encryption_status, transport_status

    target = f"{zone} {store.url}"
    transport = transport_status(store)
    verdict: Status = {"tls": "pass", "local": "pass", "plain-loopback": "warn"}.get(
        transport.state, "fail"
    )  # type: ignore[assignment]
    yield Check("TLS", target, verdict, transport.detail)
    encryption = encryption_status(store)
    at_rest: Status = {"on": "pass", "off": "fail"}.get(encryption.state, "warn")  # type: ignore[assignment]
    yield Check("encryption at rest", target, at_rest, encryption.detail)
    kept = protection(store)
    research = zone == "research"
    if kept.local:
        yield Check(
            "versioning",
            target,
            "warn" if research else "pass",
            "a local folder keeps no versions" + ("" if research else " (not needed here)"),
        )
    else:
        bad: Status = "fail" if research else "warn"
        yield Check(
            "versioning",
            target,
            "pass" if kept.versioning == "enabled" else bad,
            f"{kept.versioning} {kept.detail}".strip(),
        )
    if research:
        yield _lock_check(target, kept.local, kept.object_lock, kept.default_retention, kept.detail)


def _lock_check(
    target: str, local: bool, enabled: bool | None, default: str | None, detail: str
) -> Check:
    if local:
        return Check(
            "Object Lock", target, "warn", "a local folder cannot be write-once: locks are advisory"
        )
    if enabled is None:
        return Check("Object Lock", target, "warn", detail)
    if not enabled:
        return Check("Object Lock", target, "fail", "not enabled: snapshots cannot be write-once")
    if default is None:
        return Check(
            "Object Lock",
            target,
            "warn",
            "enabled, no default retention: only what mira locks (snapshots) is write-once",
        )
    return Check("Object Lock", target, "pass", f"enabled, default retention {default}")


def access_checks(
    settings: Settings, policy: AccessPolicy | None, stores: dict[str, Store]
) -> Iterator[Check]:
    """Whether the policy is what the server enforces, and who may read the gateway."""
    zones = Stores(gateway=settings.gateway_url, research=settings.research_url)
    target = "access policy"
    if any(store.is_local for store in stores.values()):
        yield Check(
            "policies applied",
            target,
            "warn",
            "a local folder has no identities: access is the file system's permissions",
        )
    elif policy is None:
        yield Check(
            "policies applied",
            target,
            "warn",
            "no policy file (--policy): whoever holds the store's keys reads every cohort",
        )
    else:
        yield _applied_check(settings, policy, zones)
    gateway = f"gateway {stores['gateway'].url}"
    if policy is None or stores["gateway"].is_local:
        who = (
            "whoever may read the folder on this machine"
            if stores["gateway"].is_local
            else "not governed by a policy: anyone with the store's keys"
        )
        yield Check("gateway readable by", gateway, "warn", who)
        return
    readers = readers_of(policy, zones, zones.gateway)
    outsiders = [n for n in readers if policy.principals[n].role is not Role.PIPELINE]
    yield Check(
        "gateway readable by",
        gateway,
        "fail" if outsiders else "pass",
        f"{', '.join(readers) or 'nobody'} (pipeline role"
        + (f"; not pipeline: {', '.join(outsiders)})" if outsiders else " only)"),
    )


def _applied_check(settings: Settings, policy: AccessPolicy, zones: Stores) -> Check:
    from storage.iam import IdentityAdmin, normalized, policy_document

    target = "access policy"
    try:
        admin = IdentityAdmin(settings.s3_config())
        on_server = set(admin.principals())
        wrong = []
        for name, granted in permissions(policy, zones).items():
            try:
                identity = admin.identity(name)
            except ObjectNotFound:
                wrong.append(f"{name}: no user")
                continue
            if identity.policy is None or normalized(identity.policy) != normalized(
                policy_document(granted)
            ):
                wrong.append(f"{name}: policy differs")
            elif not identity.access_key_ids:
                wrong.append(f"{name}: no key")
    except MiraError as err:
        return Check("policies applied", target, "warn", f"cannot read the server's IAM: {err}")
    stale = sorted(on_server - set(policy.principals))
    wrong += [f"{name}: on the server, not in the policy" for name in stale]
    if wrong:
        return Check("policies applied", target, "fail", "; ".join(wrong))
    return Check(
        "policies applied",
        target,
        "pass",
        f"{len(policy.principals)} principals match the server's users and policies",
    )


def prefect_checks(settings: Settings) -> Iterator[Check]:
    """Analytics and telemetry off, and how the API is reached."""
    import prefect.settings

    current = prefect.settings.get_current_settings()
    api = settings.prefect_api_url or (str(current.api.url) if current.api.url else "")
    target = f"prefect {api or '(ephemeral local server)'}"
    if not api:
        analytics = current.server.analytics_enabled
        yield Check(
            "Prefect analytics",
            target,
            "fail" if analytics else "pass",
            f"server analytics {'on' if analytics else 'off'} (this process's settings)",
        )
    else:
        yield _prefect_transport(api, target)
        yield _prefect_server_analytics(api, target)
    cloud = "api.prefect.cloud" in api
    telemetry = cloud and current.cloud.enable_orchestration_telemetry
    yield Check(
        "Prefect telemetry",
        target,
        "warn" if telemetry else "pass",
        "orchestration telemetry to Prefect Cloud is on (PREFECT_CLOUD_ENABLE_ORCHESTRATION_"
        "TELEMETRY=false)"
        if telemetry
        else "no Prefect Cloud: nothing is sent out (DO_NOT_TRACK=1)",
    )


def _prefect_transport(api: str, target: str) -> Check:
    from storage.security import is_loopback_host

    parts = urlsplit(api)
    if parts.scheme == "https":
        return Check("TLS", target, "pass", "https")
    if is_loopback_host(parts.hostname):
        return Check("TLS", target, "warn", "plain http on this machine")
    return Check("TLS", target, "fail", "plain http across the network")


def _prefect_server_analytics(api: str, target: str) -> Check:
    import httpx

    try:
        reply = httpx.get(f"{api.rstrip('/')}/admin/settings", timeout=PREFECT_TIMEOUT_S)
        reply.raise_for_status()
        analytics = json.loads(reply.text)["server"]["analytics_enabled"]
    except (httpx.HTTPError, KeyError, ValueError) as err:
        return Check("Prefect analytics", target, "warn", f"cannot ask the server: {err}")
    return Check(
        "Prefect analytics",
        target,
        "fail" if analytics else "pass",
        f"server analytics {'on' if analytics else 'off'} (as the server reports)",
    )

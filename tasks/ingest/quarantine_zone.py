"""The gateway's quarantine: a copy of each refused object beside a machine-readable reason."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mira import __version__
from storage import Store
from tasks import layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantineEntry:
    """Why one object of a batch was refused, and what it was."""

    batch: str
    path: str  # relative to the batch
    reason: str  # machine-readable code, e.g. "truncated", "phi-detected"
    detail: str
    sha256: str | None
    size: int | None
    detected_format: str | None
    stage: str = "ingest"
    # More fields of the record for a later decision (a held de-identified output, the
    # attribute paths a scan flagged); names only, never an identifier's value.
    extra: Mapping[str, Any] = field(default_factory=dict)


def quarantine(gateway: Store, source_key: str, entry: QuarantineEntry) -> str:
    """Copy ``source_key`` into the quarantine and write its reason record next to it.

    The source (in the drop zone) is left in place. Returns the quarantine key.
    """
    target = layout.quarantine_key(entry.batch, entry.path)
    gateway.copy(source_key, target)
    write_reason(gateway, target, entry)
    return target


def write_reason(store: Store, target: str, entry: QuarantineEntry) -> None:
    """The machine-readable reason record beside a quarantined copy at ``target``."""
    record = {
        "batch": entry.batch,
        "path": entry.path,
        "reason": entry.reason,
        "detail": entry.detail,
        "sha256": entry.sha256,
        "size": entry.size,
        "detected_format": entry.detected_format,
        "stage": entry.stage,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "mira_version": __version__,
        **entry.extra,
    }
    store.write_json(layout.reason_key(target), record)
    log.info("quarantined %s/%s: %s", entry.batch, entry.path, entry.reason)

"""Inputs the de-identification stage puts in the quarantine: a refused input beside its reason,
and a file whose output the scan flagged, held as ``phi-suspect`` with that output kept beside
it (:mod:`tasks.deid.suspects`, :mod:`tasks.deid.quarantine_queue`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from storage import Store, join_key
from tasks import layout
from tasks.deid.suspects import (
    PHI_SUSPECT,
    attribute_paths,
    staged_key,
    suspect_detail,
    suspect_fields,
)
from tasks.ingest import QuarantineEntry, quarantine, write_reason

if TYPE_CHECKING:
    from tasks.deid.stage import DeidJob, Outcome


def hold_suspects(
    job: DeidJob, outcomes: Sequence[Outcome], quarantine_store: Store, publish_to: str = ""
) -> list[Outcome]:
    """Hold every output the scan flagged: its input to the quarantine as ``phi-suspect``, its
    staged output kept beside it (PHI side) for a person to release or drop; the rest goes on."""
    settled = []
    for outcome in outcomes:
        if not outcome.phi_hits or not (outcome.research_key and outcome.row):
            settled.append(outcome)
            continue
        paths = attribute_paths(outcome.phi_hits)
        target = quarantine_target(quarantine_store, job.source, job.batch, outcome.item.path)
        staged = staged_key(target, outcome.research_key)
        with job.staging.open_read(outcome.research_key) as stream:
            quarantine_store.write_stream(staged, stream)
        kind = "slide" if outcome.item.format == "slide" else "instance"
        fields = suspect_fields(paths, outcome.research_key, staged, outcome.row, kind, publish_to)
        detail = suspect_detail(paths)
        quarantine_outcome(
            quarantine_store, job.source, outcome, PHI_SUSPECT, detail, job.batch, fields
        )
        held = replace(outcome, research_key=None, row=None, refusal=PHI_SUSPECT, detail=detail)
        settled.append(held)
    return settled


def quarantine_outcome(
    quarantine_store: Store,
    source: Store,
    outcome: Outcome,
    reason: str,
    detail: str,
    batch: str = "",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Quarantine one input; returns its quarantine key. In a batch the copy stays on the
    gateway store; for ``mira deid`` it is streamed from the input store into the quarantine
    folder."""
    item = outcome.item
    entry = QuarantineEntry(
        batch=batch,
        path=item.path,
        reason=reason,
        detail=detail,
        sha256=item.sha256 or None,
        size=item.size,
        detected_format=item.format,
        stage="deidentify",
        extra=extra or {},
    )
    if quarantine_store is source:
        return quarantine(quarantine_store, item.key, entry)
    target = quarantine_target(quarantine_store, source, batch, item.path)
    with source.open_read(item.key) as stream:
        quarantine_store.write_stream(target, stream)
    write_reason(quarantine_store, target, entry)
    return target


def quarantine_target(quarantine_store: Store, source: Store, batch: str, path: str) -> str:
    """The quarantine key of an input: under ``quarantine/`` on the gateway, or at its own path
    in a ``mira deid`` quarantine folder."""
    if quarantine_store is source:
        return layout.quarantine_key(batch, path)
    return join_key(batch, path)

"""The quality gate of a batch: GX suites on its catalog rows, image QA on its objects.

Results go to the catalog ``quality`` table (one part per batch: batch-level expectation rows
with key "" and one row per item and check), to ``quality/<batch>/validation.json`` and, for
items failing a ``fail`` image check, to the review queue. A failed ``fail`` expectation makes
the batch's verdict "fail", which keeps the whole batch out of splits and snapshots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from mira import __version__
from mira.errors import ConfigError, InvalidInput
from storage import Store
from tasks.dataset import (
    QUALITY_SCHEMA,
    list_parts,
    part_key,
    query_catalog,
    read_table,
    write_part,
)
from tasks.quality import review
from tasks.quality.config import QualityConfig, load_quality_config
from tasks.quality.expectations import (
    DocsSite,
    ExpectationOutcome,
    batch_frames,
    build_data_docs,
    run_suites,
)
from tasks.quality.image_qa import ItemReport, QAItem, assess_items

log = logging.getLogger(__name__)

Verdict = Literal["pass", "fail"]


@dataclass(frozen=True)
class QualitySummary:
    """What the quality stage found for one batch."""

    batch: str
    verdict: Verdict
    instances: int
    slides: int
    expectations: int
    failed_checks: tuple[str, ...]
    warned_checks: tuple[str, ...]
    items_checked: int
    items_flagged: int
    queued_for_review: tuple[str, ...]
    validation_key: str
    config_sha256: str
    input_sha256: str = ""
    reused: bool = False  # an earlier validation of the same inputs was kept


def validation_key(batch: str) -> str:
    return f"quality/{batch}/validation.json"


def item_rows(batch: str, reports: Iterable[ItemReport]) -> list[dict[str, Any]]:
    """One ``quality`` row per item and check."""
    return [
        {
            "batch": batch,
            "key": report.key,
            "check": check.check,
            "severity": check.severity,
            "passed": check.passed,
            "score": check.score,
            "threshold": check.threshold,
            "detail": check.detail,
        }
        for report in reports
        for check in report.checks
    ]


def failing(outcomes: Iterable[ExpectationOutcome], severity: str) -> tuple[str, ...]:
    """``<frame>.<check>`` of each expectation of ``severity`` that did not pass."""
    return tuple(
        f"{o.frame}.{o.check}" for o in outcomes if o.severity == severity and not o.passed
    )


def verdict_of(outcomes: Iterable[ExpectationOutcome]) -> Verdict:
    return "fail" if any(o.severity == "fail" and not o.passed for o in outcomes) else "pass"


def publish_gx_files(store: Store, batch: str, files: Sequence[tuple[str, bytes]]) -> None:
    """Keep only this run's GX files for the batch (Data Docs are built from them)."""
    prefix = f"quality/{batch}/gx"
    store.delete_prefix(f"{prefix}/")
    for relative, data in files:
        store.write_bytes(f"{prefix}/{relative}", data)


def review_candidates(batch: str, reports: Iterable[ItemReport]) -> list[review.ReviewItem]:
    return [
        review.ReviewItem(
            key=r.key,
            batch=batch,
            kind=r.kind,
            reasons=r.reasons,
            status="pending",
            thumbnail_key=r.thumbnail_key,
        )
        for r in reports
        if r.needs_review
    ]


def validation_document(
    summary: QualitySummary,
    outcomes: Sequence[ExpectationOutcome],
    reports: Sequence[ItemReport],
    identifiers: int,
) -> dict[str, Any]:
    """``validation.json``: the verdict, every expectation and the image QA counts."""
    failed_by_check: dict[str, int] = {}
    for report in reports:
        for check in report.checks:
            if not check.passed:
                failed_by_check[check.check] = failed_by_check.get(check.check, 0) + 1
    return {
        "batch": summary.batch,
        "verdict": summary.verdict,
        "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mira_version": __version__,
        "config_sha256": summary.config_sha256,
        "input_sha256": summary.input_sha256,
        "summary": dataclasses.asdict(summary),
        "phi_identifiers_checked": identifiers,
        "rows": {"instances": summary.instances, "slides": summary.slides},
        "expectations": [{**dataclasses.asdict(o), "keys": list(o.keys[:20])} for o in outcomes],
        "image_qa": {
            "checked": summary.items_checked,
            "flagged": summary.items_flagged,
            "failed_by_check": failed_by_check,
            "queued_for_review": list(summary.queued_for_review),
        },
    }


def items_of(frames: Mapping[str, Any]) -> list[QAItem]:
    items = []
    if "instances" in frames:
        for row in frames["instances"][["key", "modality"]].itertuples(index=False):
            items.append(QAItem(str(row.key), "instance", str(row.modality or "")))
    if "slides" in frames:
        items.extend(QAItem(str(key), "slide") for key in frames["slides"]["key"])
    return items


def assess_batch(
    store: Store,
    batch: str,
    *,
    config: QualityConfig | None = None,
    identifiers: Sequence[str] = (),
    dask_address: str = "",
    workers: int = 0,
    reuse_current: bool = False,
) -> QualitySummary:
    """Run the GX suites and the image QA of ``batch`` and record every result.

    Rerunning replaces the batch's quality part, GX files and queue part; a decision already
    taken on an item queued for the same reasons stays in force. With ``reuse_current`` a
    batch whose catalog rows, config and identifier count are unchanged since its last
    validation keeps that validation and nothing is rewritten (pipeline reruns).
    """
    config = config or load_quality_config()
    fingerprint = input_fingerprint(store, batch, config, len(identifiers))
    if reuse_current and (earlier := current_summary(store, batch, fingerprint)) is not None:
        log.info("batch %s: catalog rows and config unchanged; validation kept", batch)
        return earlier
    frames = batch_frames(store, batch, identifiers)
    if "instances" not in frames and "slides" not in frames:
        raise InvalidInput(f"batch {batch!r} has no instances or slides in the catalog")
    with tempfile.TemporaryDirectory(prefix="mira-gx-") as workdir:
        run = run_suites(frames, config.suites, batch, Path(workdir))
    publish_gx_files(store, batch, run.gx_files)
    items = items_of(frames)
    reports = assess_items(
        store, items, config.image_qa, dask_address=dask_address, workers=workers
    )
    rows = [o.quality_row(batch) for o in run.outcomes] + item_rows(batch, reports)
    write_part(store, "quality", batch, pa.Table.from_pylist(rows, QUALITY_SCHEMA))
    queued = review.enqueue(store, batch, review_candidates(batch, reports))
    summary = QualitySummary(
        batch=batch,
        verdict=verdict_of(run.outcomes),
        instances=len(frames.get("instances", ())),
        slides=len(frames.get("slides", ())),
        expectations=len(run.outcomes),
        failed_checks=failing(run.outcomes, "fail"),
        warned_checks=failing(run.outcomes, "warn"),
        items_checked=len(reports),
        items_flagged=sum(1 for r in reports if not all(c.passed for c in r.checks)),
        queued_for_review=tuple(item.key for item in queued),
        validation_key=validation_key(batch),
        config_sha256=config.sha256(),
        input_sha256=fingerprint,
    )
    document = validation_document(summary, run.outcomes, reports, len(identifiers))
    store.write_json(summary.validation_key, document)
    log.info("batch %s: gate %s, %d queued for review", batch, summary.verdict, len(queued))
    return summary


def input_fingerprint(store: Store, batch: str, config: QualityConfig, identifiers: int) -> str:
    """SHA-256 over what a validation depends on: the batch's catalog parts and the config."""
    digest = hashlib.sha256(f"{config.sha256()}:{identifiers}:{__version__}".encode())
    for table in ("instances", "slides"):
        key = part_key(table, batch)
        digest.update(store.sha256(key).encode() if store.exists(key) else b"-")
    return digest.hexdigest()


def current_summary(store: Store, batch: str, fingerprint: str) -> QualitySummary | None:
    """The recorded summary of ``batch`` when it was made from the same inputs, else None."""
    if not store.exists(validation_key(batch)):
        return None
    document = store.read_json(validation_key(batch))
    recorded = document.get("summary") if isinstance(document, dict) else None
    if not recorded or document.get("input_sha256") != fingerprint:
        return None
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()
    }
    fields["reused"] = True
    return QualitySummary(**fields)


def catalog_batches(store: Store) -> list[str]:
    """Every batch with instances or slides in the catalog (from the catalog, never a LIST)."""
    batches: set[str] = set()
    for table in ("instances", "slides"):
        if list_parts(store, table):
            result = query_catalog(store, f"SELECT DISTINCT batch FROM {table}")
            batches |= {str(b) for b in result.column("batch").to_pylist() if b}
    return sorted(batches)


def batch_verdicts(store: Store) -> dict[str, Verdict]:
    """The gate verdict of every validated batch, from the catalog ``quality`` table."""
    verdicts: dict[str, Verdict] = {}
    for row in read_table(store, "quality").to_pylist():
        verdicts.setdefault(row["batch"], "pass")
        if row["key"] == "" and row["severity"] == "fail" and not row["passed"]:
            verdicts[row["batch"]] = "fail"
    return verdicts


def read_validation(store: Store, batch: str) -> dict[str, Any]:
    """The stored ``validation.json`` of ``batch``."""
    key = validation_key(batch)
    if not store.exists(key):
        raise InvalidInput(f"batch {batch!r} has no quality results; run `mira qa run {batch}`")
    data = store.read_json(key)
    return data if isinstance(data, dict) else {}


def publish_data_docs(store: Store) -> DocsSite:
    """Rebuild the Data Docs of every validated batch into ``quality/data_docs/``."""
    verdicts = batch_verdicts(store)
    with tempfile.TemporaryDirectory(prefix="mira-docs-") as workdir:
        return build_data_docs(store, sorted(verdicts), verdicts, Path(workdir))


def identifiers_from_file(path: str | Path | None) -> list[str]:
    """Identifiers known for a batch, one per line (kept on the gateway side, never stored)."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read the identifier list {path}: {err}") from err
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

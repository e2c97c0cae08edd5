"""Stage 4: the quality gate. GX suites and image QA per batch, then the Data Docs.

``quality(batch)`` validates one batch; ``quality()`` with no batch re-validates every batch in
the catalog (the nightly deployment), so changed thresholds or suites apply to old batches too.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.params import StoreParams
from flows.reporting import publish_summary, run_name
from flows.retry import RETRY_POLICY
from flows.summaries import QualityRunSummary
from mira.audit import audited_flow
from mira.settings import Settings
from tasks.quality import (
    DocsSite,
    QualitySummary,
    assess_batch,
    catalog_batches,
    identifiers_from_file,
    load_quality_config,
    publish_data_docs,
)


class QualityOptions(BaseModel):
    """How the batch is judged; empty fields use the defaults."""

    config_path: str | None = Field(
        None,
        description="Quality config override (YAML/JSON). Empty: MIRA_QUALITY_CONFIG, else the "
        "defaults shipped with mira.",
    )
    phi_identifiers_file: str | None = Field(
        None,
        description="File (on the worker, gateway side) of identifiers known for the batch, one "
        "per line: catalog text containing one fails the batch. Passed as a path so the "
        "identifiers never enter Prefect's database.",
    )
    build_docs: bool = Field(True, description="Rebuild the GX Data Docs afterwards.")
    reuse_current: bool = Field(
        False,
        description="Keep a batch's validation when its catalog rows and the config are "
        "unchanged (pipeline reruns); the nightly run re-validates everything.",
    )


@task(name="assess-batch-quality", **RETRY_POLICY)
def assess_batch_task(settings: Settings, batch: str, options: QualityOptions) -> QualitySummary:
    """GX suites on the batch's catalog rows, image QA on its objects (Dask inside)."""
    return assess_batch(
        settings.research(),
        batch,
        config=load_quality_config(options.config_path or settings.quality_config),
        identifiers=identifiers_from_file(options.phi_identifiers_file),
        dask_address=settings.dask_address,
        workers=settings.dask_workers,
        reuse_current=options.reuse_current,
    )


@task(name="catalog-batches", **RETRY_POLICY)
def catalog_batches_task(settings: Settings) -> list[str]:
    """Every batch the catalog knows (instances or slides)."""
    return catalog_batches(settings.research())


@task(name="build-data-docs", **RETRY_POLICY)
def data_docs_task(settings: Settings) -> DocsSite:
    """GX Data Docs of every validated batch, published offline-ready in the research store."""
    return publish_data_docs(settings.research())


@flow(name="quality", flow_run_name=run_name("quality"), log_prints=False)
@audited_flow("flow quality")
def quality(
    batch: str | None = None,
    stores: StoreParams | None = None,
    options: QualityOptions | None = None,
) -> QualityRunSummary:
    """Validate ``batch`` (every catalog batch when empty); returns counts and gate verdicts.

    Args:
        batch: The batch to validate, as named in the catalog; empty re-validates every batch.
        stores: Where the stores are; empty fields use the worker's MIRA_* settings.
        options: How the batch is judged.
    """
    settings = (stores or StoreParams()).settings()
    options = options or QualityOptions()
    log = get_run_logger()
    batches = [batch] if batch else catalog_batches_task(settings)
    summaries = []
    for name in batches:
        summary = assess_batch_task(settings, name, options)
        log.info(
            "batch %s: gate %s; %d of %d items queued for review; failed: %s",
            name,
            summary.verdict,
            len(summary.queued_for_review),
            summary.items_checked,
            ", ".join(summary.failed_checks) or "none",
        )
        summaries.append(summary)
    changed = [s for s in summaries if not s.reused]
    docs = data_docs_task(settings) if options.build_docs and changed else None
    result = QualityRunSummary(
        verdict="fail" if any(s.verdict == "fail" for s in summaries) else "pass",
        batches=tuple(summaries),
        data_docs=docs.index_url if docs else None,
    )
    publish_summary(
        "quality",
        batch or "all",
        f"quality gate: {result.verdict}",
        [
            *(
                (
                    s.batch,
                    f"{s.verdict}; failed: {', '.join(s.failed_checks) or 'none'}; "
                    f"{len(s.queued_for_review)} of {s.items_checked} items queued for review",
                )
                for s in summaries
            ),
            ("Data Docs", result.data_docs),
        ],
    )
    return result

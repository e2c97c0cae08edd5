"""The whole pipeline for one batch: each stage is a flow of its own, run here in order.

Stage order: ingest -> deidentify -> convert -> quality -> split -> snapshot. Stages meet
through the stores and the catalog, never through each other's internals. Per-file failures are
quarantined and reported; a failed quality gate stops the batch before split and snapshot and
fails the run. Every stage is idempotent, so a rerun of a batch adds and rewrites nothing.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger, tags, task
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.convert import ConvertParams, convert_slides
from flows.deidentify import deidentify
from flows.ingest import ingest
from flows.notify import notify_on_completion, notify_on_failure
from flows.params import StoreParams
from flows.quality import QualityOptions, quality
from flows.reporting import batch_tag, run_name, tag_this_run
from flows.retry import RETRY_POLICY
from flows.snapshot import SnapshotParams, snapshot
from flows.split import SplitParams, split
from flows.summaries import PipelineSummary
from mira.audit import audited_flow
from mira.errors import MiraError
from mira.settings import Settings
from tasks.dataset import batch_split_sizes
from tasks.ingest import ClaimOutcome, check_pipeline_inputs, claim_batch_run


class GateBlocked(MiraError):
    """A ``fail`` expectation did not pass: the batch stays out of splits and snapshots."""


class PipelineOptions(BaseModel):
    """What the pipeline does after quality; the defaults make one snapshot per batch."""

    split: SplitParams = Field(default_factory=SplitParams, description="How patients are split.")
    snapshot: bool = Field(True, description="Take a locked snapshot once the batch is in.")
    snapshot_name: str = Field(
        "after-{batch}",
        description="Snapshot name; {batch} is replaced. A rerun keeps an existing snapshot.",
    )
    convert: ConvertParams = Field(default_factory=ConvertParams, description="Pyramid options.")
    quality: QualityOptions = Field(
        default_factory=lambda: QualityOptions(reuse_current=True),
        description="Quality gate; a rerun keeps a validation whose inputs are unchanged.",
    )


@flow(
    name="pipeline",
    flow_run_name=run_name("pipeline"),
    log_prints=False,
    on_completion=[notify_on_completion],
    on_failure=[notify_on_failure],
    on_crashed=[notify_on_failure],
)
@audited_flow("flow pipeline")
def pipeline(
    batch: str, stores: StoreParams | None = None, options: PipelineOptions | None = None
) -> PipelineSummary:
    """Run every stage for drop-zone batch ``batch``; returns one summary per stage.

    Args:
        batch: The drop-zone batch: its folder name under ``dropzone/`` on the gateway.
        stores: Where the stores are; empty fields use the worker's MIRA_* settings.
        options: What happens after the quality gate (split, snapshot, pyramid options).
    """
    stores = stores or StoreParams()
    options = options or PipelineOptions()
    tag_this_run(batch_tag(batch))
    settings = stores.settings()
    preflight_task(settings, batch)
    claim = claim_batch_task(settings, batch)
    if not claim.claimed:
        holder = claim.holder
        message = (
            f"batch {batch} is already being processed by run {holder.run_name} "
            f"({holder.run_id}, since {holder.claimed_at}); this run does nothing"
        )
        get_run_logger().warning("%s", message)
        return PipelineSummary(batch=batch, skipped=message)
    with tags(batch_tag(batch)):
        return _run_stages(batch, stores, options)


@task(name="claim-batch", **RETRY_POLICY)
def claim_batch_task(settings: Settings, batch: str) -> ClaimOutcome:
    """Hold the batch for this run, unless another active run holds it (tasks.ingest.runs)."""
    return claim_batch_run(
        settings.gateway(),
        batch,
        "pipeline",
        str(flow_run.id),
        str(flow_run.name),
        flow_run_is_active,
    )


@task(name="batch-split-sizes", **RETRY_POLICY)
def batch_split_task(settings: Settings, name: str, batch: str) -> dict[str, int]:
    """This batch's patients per split, for the summary (the split itself covers every batch)."""
    return batch_split_sizes(settings.research(), name, batch)


def flow_run_is_active(run_id: str) -> bool:
    """Whether the Prefect flow run ``run_id`` has not reached a final state."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
    except (ObjectNotFound, ValueError):  # deleted from the server, or not a run id at all
        return False
    return run.state is not None and not run.state.is_final()


@task(name="preflight", **RETRY_POLICY)
def preflight_task(settings: Settings, batch: str) -> None:
    """Before any stage: the secret is set and long enough, the batch is ready, stores answer."""
    settings.deid_key()
    check_pipeline_inputs(settings.gateway(), settings.research(), batch)


def _run_stages(batch: str, stores: StoreParams, options: PipelineOptions) -> PipelineSummary:
    ingested = ingest(batch, stores)
    deidentified = deidentify(batch, stores)
    converted = convert_slides(options.convert, stores, batch)
    judged = quality(batch, stores, options.quality)
    if judged.verdict == "fail":
        failed = judged.batches[0].failed_checks
        raise GateBlocked(f"batch {batch} failed the quality gate ({', '.join(failed)})")
    assigned = split(options.split, stores)
    sizes = batch_split_task(stores.settings(), options.split.name, batch)
    frozen = None
    if options.snapshot:
        name = options.snapshot_name.replace("{batch}", batch)
        params = SnapshotParams(name=name, split_name=options.split.name, if_exists="keep")
        frozen = snapshot(params, stores)
    summary = PipelineSummary(
        batch=batch,
        ingest=ingested,
        deidentify=deidentified,
        convert=converted,
        quality=judged,
        split=assigned,
        batch_split=sizes,
        snapshot=frozen,
    )
    log = get_run_logger()
    for line in summary.stage_lines():
        log.info("batch %s %s", batch, line)
    return summary

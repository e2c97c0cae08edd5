"""Stage 5: assign patients to train/validation/test splits in the research store's catalog."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field

from flows.params import StoreParams
from flows.reporting import publish_summary, run_name
from flows.retry import RETRY_POLICY
from mira.settings import Settings
from tasks.dataset import SplitRatios, SplitResult, split_dataset


class SplitParams(BaseModel):
    """How to split; a split name keeps one seed, ratios and strata for life."""

    name: str = Field("default", description="Name of the split (catalog part splits/<name>).")
    stratify_by: list[str] = Field(
        default_factory=lambda: ["modality"],
        description="Catalog columns whose values define a patient's stratum.",
    )
    ratios: str = Field("0.7,0.15,0.15", description="train,validation,test fractions.")
    seed: int = Field(0, description="Key of the patient hash: the same seed, the same split.")
    balance: bool = Field(True, description="Balance new patients within each stratum.")


@task(name="split-dataset", **RETRY_POLICY)
def split_dataset_task(settings: Settings, params: SplitParams) -> SplitResult:
    """Assign every patient of the dataset and record the table and its balance report."""
    research = settings.research()
    return split_dataset(
        research,
        name=params.name,
        stratify_by=params.stratify_by,
        ratios=SplitRatios.parse(params.ratios),
        seed=params.seed,
        balance=params.balance,
    )


@flow(name="split", flow_run_name=run_name("split", "params.name"), log_prints=False)
def split(params: SplitParams | None = None, stores: StoreParams | None = None) -> SplitResult:
    """Split the research store's dataset by patient; returns the split summary."""
    settings = (stores or StoreParams()).settings()
    result = split_dataset_task(settings, params or SplitParams())
    log = get_run_logger()
    log.info(
        "split %s: %d patients (%d new), %d items, %d slides without a patient link",
        result.name,
        result.patients,
        result.new_patients,
        result.items,
        result.unlinked_slides,
    )
    for row in result.balance:
        log.info("  %s %s: %d patients, %d items", row.split, row.stratum, row.patients, row.items)
    publish_summary(
        "split",
        result.name,
        f"split {result.name}: {result.patients} patients ({result.new_patients} new)",
        [
            *(
                (f"{row.split} / {row.stratum}", f"{row.patients} patients, {row.items} items")
                for row in result.balance
            ),
            ("slides without a patient link", f"{result.unlinked_slides} (each its own unit)"),
        ],
    )
    return result

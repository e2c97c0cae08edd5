"""What each stage flow returns: typed summaries the CLI renders and the UI shows as the result.

A stage whose work is one task returns that task's result record (``IngestResult``,
``DeidStageResult``, ``SplitResult``); the models here add what a flow assembles from several
tasks. Pydantic, so a summary validates, serialises to JSON for Prefect, and reads by attribute.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tasks.dataset import SnapshotResult, SplitResult
from tasks.deid import DeidStageResult, held_summary
from tasks.ingest import IngestResult
from tasks.quality import QualitySummary
from tasks.wsi import ConversionResult


class StageSummary(BaseModel):
    model_config = ConfigDict(frozen=True)


class ConvertSummary(StageSummary):
    """Slides converted by this run and slides whose pyramid was already current."""

    converted: int
    current: int
    slides: tuple[ConversionResult, ...] = ()


class QualityRunSummary(StageSummary):
    """The gate verdict over the batches validated, each batch's summary, and the Data Docs."""

    verdict: Literal["pass", "fail"]
    batches: tuple[QualitySummary, ...]
    data_docs: str | None = None

    @property
    def verdicts(self) -> dict[str, str]:
        return {summary.batch: summary.verdict for summary in self.batches}

    @property
    def queued_for_review(self) -> int:
        return sum(len(summary.queued_for_review) for summary in self.batches)


class SnapshotSummary(StageSummary):
    """The snapshot taken (``created``), or an existing one ``kept`` under the same name."""

    name: str
    top_hash: str
    kept: bool = False
    created: SnapshotResult | None = None
    verified: int | None = None  # objects re-hashed after creation


class PipelineSummary(StageSummary):
    """One batch through the stages; a stage that did not run is None, a failure sets ``error``."""

    batch: str
    ingest: IngestResult | None = None
    deidentify: DeidStageResult | None = None
    convert: ConvertSummary | None = None
    quality: QualityRunSummary | None = None
    split: SplitResult | None = None
    batch_split: dict[str, int] = {}  # this batch's patients per split (the split covers all)
    snapshot: SnapshotSummary | None = None
    error: str | None = None
    skipped: str | None = None  # another active run holds the batch; this one did nothing

    @property
    def held(self) -> dict[str, int]:
        """Files held back by ingest and de-identification, by reason (a reason both stages
        use is counted once per file: no file is held by both)."""
        counts: dict[str, int] = {}
        for stage in (self.ingest, self.deidentify):
            for reason, count in (stage.quarantined if stage else {}).items():
                counts[reason] = counts.get(reason, 0) + count
        return counts

    @property
    def duplicates(self) -> dict[str, int]:
        """Inputs that were another input again: at ingest (same bytes or UID and bytes) and
        at de-identification (same instance after de-identification)."""
        return {
            "ingest": self.ingest.duplicates if self.ingest else 0,
            "deidentify": self.deidentify.duplicates if self.deidentify else 0,
        }

    def held_line(self) -> str:
        """The share of the batch's files held and why (``held 2 of 40 files (5.0%): ...``)."""
        files = self.ingest.files if self.ingest else 0
        if not files and self.deidentify:
            files = self.deidentify.files
        return held_summary(self.held, files)

    def stage_lines(self) -> list[str]:
        """One line per stage that ran, as the run log shows them."""
        lines = []
        if self.ingest:
            held = sum(self.ingest.quarantined.values())
            lines.append(
                f"ingest: {self.ingest.accepted} accepted, {held} quarantined, "
                f"{self.ingest.duplicates} duplicates"
            )
        if self.deidentify:
            d = self.deidentify
            lines.append(
                f"deidentify: {d.instances} DICOM, {d.slides} slides, "
                f"{sum(d.quarantined.values())} quarantined "
                f"({d.quarantined.get('phi-suspect', 0)} phi-suspect), {d.duplicates} duplicates"
            )
        if self.ingest or self.deidentify:
            lines.append(self.held_line())
        if self.convert:
            lines.append(
                f"convert: {self.convert.converted} converted, {self.convert.current} current"
            )
        if self.quality:
            lines.append(
                f"quality: {self.quality.verdict}, {self.quality.queued_for_review} for review"
            )
        if self.split:
            sizes = ", ".join(f"{k} {v}" for k, v in self.batch_split.items()) or "none"
            lines.append(f"split {self.split.name}: this batch's patients {sizes}")
        if self.snapshot:
            lines.append(f"snapshot {self.snapshot.name}: top hash {self.snapshot.top_hash}")
        return lines

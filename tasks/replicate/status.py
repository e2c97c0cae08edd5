"""How far each target lags behind the local research store, and when it should catch up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage import Store
from tasks.replicate.plan import plan_batch, published_batches
from tasks.replicate.progress import Progress

RATE_WINDOW = 20  # the latest batches whose transfer rate estimates the catch-up time


@dataclass(frozen=True)
class TargetLag:
    """One target's backlog: what is published locally and not yet replicated and verified."""

    target: str
    replicated_batches: int
    batches: int
    objects: int
    bytes: int
    oldest_unreplicated: str | None  # publish time of the oldest batch not yet on the target
    rate_bytes_per_s: float | None  # measured over the latest replicated batches
    eta_seconds: float | None  # backlog bytes at that rate; None without a measurement

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def target_lag(local: Store, target: str) -> TargetLag:
    """The lag of ``target`` (a name of the progress records) behind ``local``."""
    progress = Progress(local, target)
    done = {record.batch: record for record in progress.done_records()}
    batches = objects = size = replicated = 0
    oldest: str | None = None
    for batch in published_batches(local):
        plan = plan_batch(local, batch)
        record = done.get(batch.batch)
        if record is not None and record.catalog_sha256 == {p.key: p.sha256 for p in plan.catalog}:
            replicated += 1
            continue
        batches += 1
        objects += len(plan.objects) + len(plan.catalog)
        size += plan.bytes
        if oldest is None or batch.published_at < oldest:
            oldest = batch.published_at
    recent = sorted(done.values(), key=lambda r: r.finished_at)[-RATE_WINDOW:]
    seconds = sum(r.seconds for r in recent)
    sent = sum(r.sent_bytes for r in recent)
    rate = sent / seconds if seconds > 0 and sent > 0 else None
    return TargetLag(
        target=target,
        replicated_batches=replicated,
        batches=batches,
        objects=objects,
        bytes=size,
        oldest_unreplicated=oldest,
        rate_bytes_per_s=rate,
        eta_seconds=size / rate if rate else (0.0 if not size else None),
    )


def lag_report(local: Store, targets: Sequence[str]) -> list[TargetLag]:
    return [target_lag(local, name) for name in targets]

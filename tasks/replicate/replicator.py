"""Replicating published batches to remote targets, in publish order, each batch at most once.

Per target and batch: skip it when a done record matches its catalog parts; else claim it (an
exclusive lease), copy its data objects (concurrently, each verified), then its catalog parts one
by one, ``instances`` last, so a reader of the remote catalog never sees half a batch; record it
done and release the claim. A link that stays down ends the target's pass with the batch
``failed``; the next pass resumes it where it stopped.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from mira.errors import IntegrityError, StoreError
from storage import S3Config, Store, open_store
from storage.s3_upload import VerifiedUploader
from tasks.replicate.plan import BatchPlan, PublishedBatch, plan_batch, published_batches
from tasks.replicate.progress import BatchClaim, BatchDone, Progress, new_holder, now_utc
from tasks.replicate.transfer import Counters, LinkOptions, ObjectCopier, ObjectResult, RateLimiter

log = logging.getLogger(__name__)
BatchStatus = Literal["replicated", "already", "held", "blocked", "failed"]


@dataclass(frozen=True)
class RemoteTarget:
    """A remote research store: a name (its key in progress records), an S3 URL and its own
    credentials and endpoint."""

    name: str
    url: str
    s3: S3Config = field(default_factory=S3Config)

    def open(self) -> Store:
        return open_store(self.url, self.s3)


@dataclass(frozen=True)
class BatchReport:
    """What one pass did with one batch for one target."""

    target: str
    batch: str
    status: BatchStatus
    sent: int = 0  # objects sent (catalog parts included)
    present: int = 0  # objects the remote already held, verified
    resent: tuple[str, ...] = ()  # remote copies that differed from the catalog, sent again
    refused: tuple[str, ...] = ()  # objects whose local bytes did not match the catalog
    sent_bytes: int = 0
    refused_checksums: int = 0  # requests the server refused for damaged bytes
    seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class ReplicationSummary:
    reports: tuple[BatchReport, ...]

    @property
    def sent_bytes(self) -> int:
        return sum(r.sent_bytes for r in self.reports)

    @property
    def ok(self) -> bool:
        return all(r.status in ("replicated", "already", "held") for r in self.reports)

    def count(self, status: BatchStatus) -> int:
        return sum(r.status == status for r in self.reports)


def replicate(
    local: Store,
    targets: Sequence[RemoteTarget],
    options: LinkOptions | None = None,
    *,
    batches: Sequence[str] | None = None,
    holder: str | None = None,
    reverify: bool = False,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ReplicationSummary:
    """Copy every published batch of ``local`` (or the named ones) to each target.

    With ``reverify``, batches already replicated are checked again on the remote (a HEAD per
    object: size and the server's checksum) and any copy that differs is sent again.
    """
    options = options or LinkOptions()
    holder = holder or new_holder()
    reports: list[BatchReport] = []
    limiter = RateLimiter(options.max_mbps)  # one cap for the whole link, all targets
    published = published_batches(local)
    if batches is not None:
        published = [b for b in published if b.batch in set(batches)]
    for target in targets:
        for report in _target_pass(local, target, published, options, limiter, holder, reverify):
            reports.append(report)
            if on_batch is not None:
                on_batch(report)
            if report.status == "failed":
                break  # the link or the target is down: the next pass resumes here
    return ReplicationSummary(tuple(reports))


def _target_pass(
    local: Store,
    target: RemoteTarget,
    published: Sequence[PublishedBatch],
    options: LinkOptions,
    limiter: RateLimiter,
    holder: str,
    reverify: bool,
) -> Iterator[BatchReport]:
    """The batches of one target, replicated one at a time as the caller iterates."""
    progress = Progress(local, target.name)
    uploader = VerifiedUploader(target.open())
    for batch in published:
        yield replicate_batch(
            local, target.name, uploader, progress, batch, options, limiter, holder, reverify
        )


def replicate_batch(
    local: Store,
    target: str,
    uploader: VerifiedUploader,
    progress: Progress,
    batch: PublishedBatch,
    options: LinkOptions,
    limiter: RateLimiter,
    holder: str,
    reverify: bool = False,
) -> BatchReport:
    """Replicate one batch to one target unless it is there already or another replicator
    holds it."""
    plan = plan_batch(local, batch)
    if not reverify and _is_done(progress, plan):
        return BatchReport(target, batch.batch, "already")
    outcome = progress.claim(batch.batch, holder)
    if not outcome.claimed:
        return BatchReport(target, batch.batch, "held", detail=f"held by {outcome.claim.holder}")
    claim = outcome.claim
    stop = threading.Event()
    heartbeat = threading.Thread(target=_keep_lease, args=(progress, claim, stop), daemon=True)
    heartbeat.start()
    try:
        if not reverify and _is_done(progress, plan):  # the previous holder finished it
            return BatchReport(target, batch.batch, "already")
        return _copy_batch(local, target, uploader, progress, plan, options, limiter)
    finally:
        stop.set()
        heartbeat.join()
        progress.release(claim)


def _keep_lease(progress: Progress, claim: BatchClaim, stop: threading.Event) -> None:
    """Renew the claim every third of its lease while the batch is being copied (a large
    batch on a slow link outlasts one lease)."""
    while not stop.wait(progress.lease.total_seconds() / 3):
        try:
            claim = progress.renew(claim)
        except StoreError as err:  # the next renewal may get through; the lease is long
            log.warning("could not renew the claim on %s: %s", claim.batch, err)


def _remote_keys(uploader: VerifiedUploader, plan: BatchPlan) -> set[str]:
    """The keys the remote holds in the batch's folders (one listing per folder): an object
    not among them needs no HEAD before it is sent."""
    folders = {obj.key.rpartition("/")[0] + "/" for obj in plan.objects}
    return {info.key for folder in sorted(folders) for info in uploader.store.list(folder)}


def _is_done(progress: Progress, plan: BatchPlan) -> bool:
    done = progress.done_record(plan.batch)
    return done is not None and done.catalog_sha256 == {p.key: p.sha256 for p in plan.catalog}


def _copy_batch(
    local: Store,
    target: str,
    uploader: VerifiedUploader,
    progress: Progress,
    plan: BatchPlan,
    options: LinkOptions,
    limiter: RateLimiter,
) -> BatchReport:
    started = time.monotonic()
    counters = Counters()
    results: list[ObjectResult] = []
    try:
        listed = _remote_keys(uploader, plan)
        copier = ObjectCopier(local, uploader, progress, options, limiter, counters, listed)
        with ThreadPoolExecutor(max(1, options.concurrency)) as pool:
            # each object in a copy of this context: the audit trail's listener sees its I/O
            # largest first: a large object started last would trail alone at the batch's end
            objects = sorted(plan.objects, key=lambda o: -o.size)
            contexts = [contextvars.copy_context() for _ in objects]
            copies = pool.map(lambda c, o: c.run(copier.copy, o), contexts, objects)
            results.extend(copies)
        refused = tuple(r.key for r in results if r.outcome == "refused") + plan.refused
        if refused:
            log.error(
                "batch %s not replicated to %s: %d objects refused",
                plan.batch,
                target,
                len(refused),
            )
            return _report(
                target,
                plan,
                "blocked",
                results,
                counters,
                started,
                refused=refused,
                detail="objects whose bytes do not match the catalog were not sent",
            )
        for part in plan.catalog:  # instances last: the commit
            results.append(copier.copy_bytes(part.key, part.data))
    except (StoreError, IntegrityError) as err:
        log.error("replication of %s to %s stopped: %s", plan.batch, target, err)
        return _report(target, plan, "failed", results, counters, started, detail=str(err))
    report = _report(target, plan, "replicated", results, counters, started)
    if counters.sent_bytes == 0 and _is_done(progress, plan):
        return report  # a re-verification that found nothing to send keeps the measured rate
    progress.save_done(
        BatchDone(
            batch=plan.batch,
            published_at=plan.published_at,
            objects=len(plan.objects) + len(plan.catalog),
            bytes=plan.bytes,
            sent_bytes=counters.sent_bytes,
            seconds=round(report.seconds, 3),
            finished_at=now_utc().isoformat(),
            catalog_sha256={p.key: p.sha256 for p in plan.catalog},
            resent=list(report.resent),
        )
    )
    return report


def _report(
    target: str,
    plan: BatchPlan,
    status: BatchStatus,
    results: Sequence[ObjectResult],
    counters: Counters,
    started: float,
    *,
    refused: tuple[str, ...] = (),
    detail: str = "",
) -> BatchReport:
    return BatchReport(
        target=target,
        batch=plan.batch,
        status=status,
        sent=sum(r.outcome in ("sent", "resent") for r in results),
        present=sum(r.outcome == "present" for r in results),
        resent=tuple(r.key for r in results if r.outcome == "resent"),
        refused=refused,
        sent_bytes=counters.sent_bytes,
        refused_checksums=counters.refused_checksums,
        seconds=time.monotonic() - started,
        detail=detail,
    )

"""One run per batch and stage, whoever starts it: the UI form, the API, ``mira run`` or the sensor.

A run claims ``runs/<batch>/<stage>/<generation>.json`` on the gateway by exclusive create
(atomic on a local disk and on S3). A start finds the latest claim; while the run holding it is
still active, the start is a no-op that names the holder. Once that run has ended (completed,
failed or crashed) the next start takes the next generation, so a rerun after a failure is never
blocked by a stale claim, and two starts racing for one generation cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from mira.errors import AlreadyExists, ObjectNotFound
from storage import Store, join_key
from tasks import layout


@dataclass(frozen=True)
class RunClaim:
    """Which run holds (or held) a batch's stage, from which generation on."""

    batch: str
    stage: str
    generation: int
    run_id: str
    run_name: str
    claimed_at: str


@dataclass(frozen=True)
class ClaimOutcome:
    """``claimed``: this run holds the batch's stage; else ``holder`` is the active run that does."""

    claimed: bool
    holder: RunClaim


def claim_folder(batch: str, stage: str) -> str:
    return join_key(layout.RUN_CLAIMS, batch, stage)


def latest_claim(gateway: Store, batch: str, stage: str) -> RunClaim | None:
    """The newest claim of the batch's stage, or None when no run ever claimed it."""
    folder = claim_folder(batch, stage)
    generations = [
        int(name.removesuffix(".json"))
        for info in gateway.list(f"{folder}/")
        if (name := info.key.rsplit("/", 1)[-1]).removesuffix(".json").isdigit()
    ]
    if not generations:
        return None
    try:
        return RunClaim(**gateway.read_json(join_key(folder, f"{max(generations)}.json")))
    except ObjectNotFound:
        return None


def claim_batch_run(
    gateway: Store,
    batch: str,
    stage: str,
    run_id: str,
    run_name: str,
    is_active: Callable[[str], bool],
) -> ClaimOutcome:
    """Claim ``stage`` of ``batch`` for run ``run_id`` unless another active run holds it.

    ``is_active(run_id)`` asks the orchestrator whether a run is still going; a retry of the
    run that holds the claim keeps it.
    """
    latest = latest_claim(gateway, batch, stage)
    if latest is not None and (latest.run_id == run_id or is_active(latest.run_id)):
        return ClaimOutcome(claimed=latest.run_id == run_id, holder=latest)
    claim = RunClaim(
        batch=batch,
        stage=stage,
        generation=(latest.generation if latest else 0) + 1,
        run_id=run_id,
        run_name=run_name,
        claimed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    key = join_key(claim_folder(batch, stage), f"{claim.generation}.json")
    try:
        gateway.write_json(key, claim.__dict__, exclusive=True)
    except AlreadyExists:  # another start won this generation
        winner = RunClaim(**gateway.read_json(key))
        return ClaimOutcome(claimed=winner.run_id == run_id, holder=winner)
    return ClaimOutcome(claimed=True, holder=claim)


def claimed_batches(gateway: Store) -> set[str]:
    """Batches some run has claimed (run before, or running), from one listing."""
    root = f"{layout.RUN_CLAIMS}/"
    return {info.key[len(root) :].split("/")[0] for info in gateway.list(root)}

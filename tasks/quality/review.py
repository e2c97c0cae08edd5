"""The human review queue: catalog ``review`` rows, where the newest row of a key is its state.

The quality stage writes one queue part per batch (``queue-<batch>``: pending items, each with
its reasons and thumbnail). A person's decision is a new part of one row (``decision-...``),
so nothing is ever overwritten and the whole history stays readable. ``excluded_keys``
keeps pending and rejected items out of splits and snapshots.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pyarrow as pa

from mira.errors import InvalidInput
from storage import Store
from tasks.dataset import (
    REVIEW_SCHEMA,
    delete_part,
    read_part,
    read_table,
    write_part,
)

Status = Literal["pending", "accepted", "rejected"]
DECISIONS: tuple[Status, ...] = ("accepted", "rejected")
REVIEW_COLUMNS = REVIEW_SCHEMA.append(pa.field("note", pa.string()))


@dataclass(frozen=True)
class ReviewItem:
    """One row of the review table: an item's state as of ``updated_at``."""

    key: str
    batch: str
    kind: str
    reasons: str
    status: str
    thumbnail_key: str = ""
    updated_at: str = ""
    decided_by: str = ""
    note: str = ""

    def row(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def utc_now() -> str:
    """ISO 8601 UTC with microseconds: sorts as text in time order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def queue_part(batch: str) -> str:
    return f"queue-{batch}"


def _items(table: pa.Table) -> list[ReviewItem]:
    fields = [f.name for f in dataclasses.fields(ReviewItem)]
    return [
        ReviewItem(**{name: str(row.get(name) or "") for name in fields})
        for row in table.to_pylist()
    ]


def review_rows(store: Store) -> list[ReviewItem]:
    """Every review row of the catalog, oldest first."""
    rows = _items(read_table(store, "review"))
    return sorted(rows, key=lambda item: item.updated_at)


def latest(rows: Iterable[ReviewItem]) -> dict[str, ReviewItem]:
    """The current state of each key: its row with the newest ``updated_at``."""
    current: dict[str, ReviewItem] = {}
    for item in rows:
        seen = current.get(item.key)
        if seen is None or item.updated_at >= seen.updated_at:
            current[item.key] = item
    return current


def list_items(
    store: Store, status: str | None = "pending", batch: str | None = None
) -> list[ReviewItem]:
    """Current items, filtered by status (None: every status) and batch, sorted by key."""
    items = latest(review_rows(store)).values()
    return sorted(
        (i for i in items if (status is None or i.status == status) and batch in (None, i.batch)),
        key=lambda item: item.key,
    )


def history(store: Store, key: str) -> list[ReviewItem]:
    """Every row of ``key``, oldest first; ``InvalidInput`` when it was never queued."""
    rows = [item for item in review_rows(store) if item.key == key]
    if not rows:
        raise InvalidInput(f"no review item for {key!r}")
    return rows


def enqueue(store: Store, batch: str, items: Sequence[ReviewItem]) -> list[ReviewItem]:
    """Publish the pending items of ``batch`` (replacing its previous queue part).

    An item queued before for the same reasons keeps its first timestamp, so a decision
    taken since stays in force when the batch is validated again; new reasons queue it anew.
    """
    previous = read_part(store, "review", queue_part(batch))
    earlier = {item.key: item for item in _items(previous)} if previous is not None else {}
    now = utc_now()
    queued = []
    for item in items:
        before = earlier.get(item.key)
        same = before is not None and before.reasons == item.reasons
        stamp = before.updated_at if same and before is not None else now
        queued.append(dataclasses.replace(item, status="pending", updated_at=stamp))
    if not queued:
        delete_part(store, "review", queue_part(batch))
        return []
    table = pa.Table.from_pylist([item.row() for item in queued], schema=REVIEW_COLUMNS)
    write_part(store, "review", queue_part(batch), table)
    return queued


def decide(store: Store, key: str, status: str, by: str, note: str = "") -> ReviewItem:
    """Record a person's decision on a queued item as a new row of its own part."""
    if status not in DECISIONS:
        raise InvalidInput(f"a decision is one of {', '.join(DECISIONS)}, not {status!r}")
    if not by.strip():
        raise InvalidInput("a decision needs the name of the person taking it (--by)")
    current = history(store, key)[-1]
    decided = dataclasses.replace(
        current, status=status, decided_by=by.strip(), note=note, updated_at=utc_now()
    )
    stamp = decided.updated_at.replace("-", "").replace(":", "").replace(".", "")
    part = f"decision-{stamp}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    table = pa.Table.from_pylist([decided.row()], schema=REVIEW_COLUMNS)
    write_part(store, "review", part, table)
    return decided

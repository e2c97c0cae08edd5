"""The quarantine as a queue: every held file can be listed, shown, and released or dropped by a
person, each decision recorded.

An item is a quarantined copy with its ``.reason.json`` record, whatever put it there (ingest,
de-identification, a UID conflict, a ``phi-suspect`` hold). Its id is its key below the queue's
root: ``<batch>/<path>`` in the gateway's ``quarantine/``, or its path in a ``mira deid``
quarantine folder. A decision is a record of its own beside the reason,
``<item>.decision-<time>.json``, written once and never replaced (who, when, what, note), so the
history stays whole; an item without one is pending. What release means depends on the reason
(:data:`RELEASE_RULES`, :mod:`tasks.deid.release`); where no release can be made safe it is
refused and the item can only be dropped. Everything here is PHI side: ids are upload paths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mira.errors import AlreadyExists, InvalidInput
from storage import Store, join_key
from tasks import layout
from tasks.deid.ingested import CHANGED_AFTER_INGEST
from tasks.deid.suspects import PHI_SUSPECT
from tasks.parallel import parallel_map

DECISION_INFIX = ".decision-"
READ_THREADS = 8
Action = Literal["released", "dropped"]

# Reasons whose file is put back through the pipeline: copied into a new drop-zone batch.
RESTAGE = frozenset(
    {
        "size-mismatch",
        "checksum-mismatch",
        "not-in-manifest",
        "patient-link-not-slide",
        "deid-refused",
        CHANGED_AFTER_INGEST,
    }
)
_BROKEN = "the file itself is broken or not an image mira reads; it would be refused again"
# Reasons no release can make safe, and why (the item can still be dropped).
REFUSED: Mapping[str, str] = {
    "not-a-regular-file": "a link or special file is never opened: there is no copy to release",
    "invalid-name": "its name is not UTF-8: rename the file and upload it again",
    "empty-file": _BROKEN,
    "truncated": _BROKEN,
    "missing-attribute": _BROKEN,
    "unsupported-type": _BROKEN,
    "decompression-bomb": "checking it would decode more than the ceiling allows",
    "unreadable": _BROKEN,
    "invalid-pyramid": _BROKEN,
    "incomplete-slide": "its slide's series is incomplete or inconsistent: upload the whole "
    "series again",
    "deid-invalid": _BROKEN,
    "duplicate-uid-conflict": "another file holds its SOP Instance UID with other content; "
    "fix the UIDs at the source",
    "uid-conflict": "another file holds its SOP Instance UID with other content; "
    "fix the UIDs at the source",
    "phi-detected": "held by an older mira that kept no de-identified output; upload it again",
    "slide-label-image": "a slide's label or overview image shows identifying text by nature",
    "slide-thumbnail-text": "a slide's thumbnail shows text; it is never published",
}
RELEASE_RULES: Mapping[str, str] = {
    PHI_SUSPECT: "published to the research store exactly as staged, with its catalog rows",
    **{
        reason: "copied into a new drop-zone batch and put through the pipeline"
        for reason in RESTAGE
    },
    **{reason: f"refused: {why}" for reason, why in REFUSED.items()},
}


@dataclass(frozen=True)
class HeldItem:
    """One quarantined file: its reason record and every decision taken on it, oldest first."""

    id: str
    key: str  # the quarantined copy's key in the store
    record: Mapping[str, Any]
    decisions: tuple[Mapping[str, Any], ...] = ()

    @property
    def reason(self) -> str:
        return str(self.record.get("reason", ""))

    @property
    def batch(self) -> str:
        return str(self.record.get("batch") or "")

    @property
    def status(self) -> str:
        """``pending`` until a decision; then the newest decision's action."""
        return str(self.decisions[-1]["action"]) if self.decisions else "pending"

    @property
    def holds_output(self) -> bool:
        """Whether a de-identified output was kept for it (``phi-suspect``, or any hold whose
        record names a staged output): release publishes that output as staged."""
        return self.reason == PHI_SUSPECT or bool(self.record.get("staged_key"))

    @property
    def release_rule(self) -> str:
        if self.holds_output:
            return RELEASE_RULES[PHI_SUSPECT]
        return RELEASE_RULES.get(self.reason, f"refused: no release rule for {self.reason!r}")


@dataclass(frozen=True)
class QuarantineQueue:
    """A quarantine in ``store`` below ``prefix`` (``quarantine`` on the gateway; empty for a
    ``mira deid`` quarantine folder)."""

    store: Store
    prefix: str = layout.QUARANTINE

    def key_of(self, item_id: str) -> str:
        return join_key(self.prefix, item_id) if self.prefix else item_id

    def items(self, batch: str | None = None) -> list[HeldItem]:
        """Every item (of ``batch`` only, when given) with its decisions, sorted by id."""
        reasons: dict[str, str] = {}
        decisions: dict[str, list[str]] = {}
        folder = join_key(self.prefix, batch) if batch and self.prefix else self.prefix
        for info in self.store.list(folder + "/" if folder else ""):
            if info.key.endswith(layout.REASON_SUFFIX):
                reasons[info.key.removesuffix(layout.REASON_SUFFIX)] = info.key
            elif DECISION_INFIX in info.key and info.key.endswith(".json"):
                decisions.setdefault(info.key.rpartition(DECISION_INFIX)[0], []).append(info.key)
        # One GET per record: on S3 they wait on the network, so a few run at once.
        return parallel_map(
            lambda key: self._item(key, reasons[key], sorted(decisions.get(key, ()))),
            sorted(reasons),
            READ_THREADS,
        )

    def item(self, item_id: str) -> HeldItem:
        """One item; ``InvalidInput`` naming the id when the queue has no such item."""
        key = self.key_of(item_id.strip("/"))
        reason = layout.reason_key(key)
        if not self.store.exists(reason):
            raise InvalidInput(
                f"no quarantined item {item_id!r} in {self.store.url_of(self.prefix)}; "
                "`mira quarantine list --all` shows every item"
            )
        found = [i.key for i in self.store.list(key + DECISION_INFIX) if i.key.endswith(".json")]
        return self._item(key, reason, sorted(found))

    def _item(self, key: str, reason_key: str, decision_keys: Iterable[str]) -> HeldItem:
        item_id = key[len(self.prefix) + 1 :] if self.prefix else key
        record = self.store.read_json(reason_key)
        decisions = tuple(self.store.read_json(k) for k in decision_keys)
        return HeldItem(item_id, key, record, decisions)

    def release(
        self,
        item_id: str,
        by: str,
        note: str = "",
        *,
        research: Store | None = None,
        open_store: Callable[[str], Store] | None = None,
    ) -> dict[str, Any]:
        """Release a pending item as its reason allows (:data:`RELEASE_RULES`); returns the
        decision recorded. A phi-suspect item of a batch needs ``research``; one of ``mira
        deid`` is published into the folder it was made for, opened with ``open_store``."""
        from tasks.deid.release import publish_held, restage  # the catalog: pyarrow, DuckDB

        item = self._pending(item_id, by)
        if item.holds_output:
            target = research if item.batch else _output_store(item, open_store)
            if target is None:
                raise InvalidInput("releasing a phi-suspect item needs the research store")
            where = publish_held(self.store, item.record, target)
        elif item.reason in RESTAGE and item.batch:
            where = restage(self.store, item.key, item.batch, item.record["path"])
        elif item.reason in RESTAGE:
            raise InvalidInput(
                f"{item.id} ({item.reason}) is from a `mira deid` run, which has no drop zone to "
                "put it back into: run `mira deid` on the file again"
            )
        else:
            why = REFUSED.get(item.reason, "mira has no release rule for this reason")
            raise InvalidInput(f"{item.id} cannot be released ({item.reason}): {why}")
        return self._decide(item, "released", by, note, where)

    def drop(self, item_id: str, by: str, note: str = "") -> dict[str, Any]:
        """Drop a pending item: it is never published; a held output is deleted (the
        quarantined input and the records stay)."""
        item = self._pending(item_id, by)
        staged = item.record.get("staged_key")
        if staged and self.store.exists(staged):
            self.store.delete(staged)
        return self._decide(item, "dropped", by, note, "")

    def _pending(self, item_id: str, by: str) -> HeldItem:
        if not by.strip():
            raise InvalidInput("a decision needs the name of the person taking it (--by)")
        item = self.item(item_id)
        if item.decisions:
            last = item.decisions[-1]
            raise InvalidInput(
                f"{item.id} was already {last['action']} by {last['by']} at {last['time']}"
            )
        return item

    def _decide(
        self, item: HeldItem, action: Action, by: str, note: str, where: str
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        decision = {
            "item": item.id,
            "reason": item.reason,
            "action": action,
            "by": by.strip(),
            "note": note,
            "time": now.isoformat(timespec="microseconds"),
            "result": where,
        }
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        try:
            self.store.write_json(
                f"{item.key}{DECISION_INFIX}{stamp}.json", decision, exclusive=True
            )
        except AlreadyExists as err:
            raise InvalidInput(f"{item.id}: another decision was recorded at {stamp}") from err
        return decision


def _output_store(item: HeldItem, open_store: Callable[[str], Store] | None) -> Store | None:
    url = str(item.record.get("publish_to") or "")
    if not url:
        raise InvalidInput(f"{item.id} names no output folder to publish into")
    return open_store(url) if open_store else None


def reason_counts(items: Iterable[HeldItem]) -> dict[str, int]:
    """How many items per reason."""
    return dict(sorted(Counter(item.reason for item in items).items()))


def held_summary(held: Mapping[str, int], files: int) -> str:
    """``held 3 of 40 files (7.5%): phi-suspect 1, truncated 2``: the share of files held back
    and why, as ``mira deid`` and the pipeline summary print it."""
    count = sum(held.values())
    share = f" ({count / files:.1%})" if files else ""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(held.items()) if n)
    return f"held {count} of {files} files{share}" + (f": {reasons}" if reasons else "")

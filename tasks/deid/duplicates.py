"""Inputs that are one instance: duplicates and SOP Instance UID conflicts.

Outputs are filed under their (pseudonymised, injective) SOP Instance UID, so two inputs sharing
one would overwrite each other. Ingest drops byte-identical copies and refuses some conflicts, but
not every case reaches it (``mira deid`` on a folder has no ingest; a file re-sent with a changed
header after its ingest record was removed). Here, after de-identification:

- outputs with one UID and equal bytes (pixel data and header) are one instance: the first in
  path order is published, every other is a ``duplicate`` (counted, recorded on the gateway side);
- outputs with one UID and different bytes, or whose key the store already holds with other
  bytes, are a ``uid-conflict``: each such input is quarantined with both paths in its reason,
  and nothing is overwritten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from storage import Store

if TYPE_CHECKING:
    from tasks.deid.stage import Outcome

UID_CONFLICT = "uid-conflict"
DUPLICATES_NAME = "duplicates.json"


def settle_instances(outcomes: Sequence[Outcome], store: Store) -> list[Outcome]:
    """The outcomes with every duplicate marked and every UID conflict refused (same order)."""
    by_uid: defaultdict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.row and outcome.research_key and outcome.item.format != "slide":
            by_uid[outcome.row["sop_instance_uid"]].append(outcome)
    settled: dict[int, Outcome] = {}
    for group in by_uid.values():
        group.sort(key=lambda o: o.item.path)
        first = group[0]
        assert first.research_key and first.row
        if len({o.row["sha256"] for o in group if o.row}) > 1:
            for outcome in group:
                others = [o.item.path for o in group if o is not outcome]
                settled[id(outcome)] = _conflict(outcome, others)
        elif _holds_other_bytes(store, first.research_key, first.row["sha256"]):
            published = f"{first.research_key} (already published)"
            settled.update({id(o): _conflict(o, [published]) for o in group})
        else:
            settled.update({id(o): _duplicate(o, first.item.path) for o in group[1:]})
    return [settled.get(id(outcome), outcome) for outcome in outcomes]


def duplicate_records(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One record per duplicate input: its path and the path of the input published for it
    (gateway-side names: never written to the research store)."""
    return [
        {"path": o.item.path, "duplicate_of": o.duplicate_of, "sha256": o.item.sha256 or None}
        for o in outcomes
        if o.duplicate_of
    ]


def _holds_other_bytes(store: Store, key: str, sha256: str) -> bool:
    return store.exists(key) and store.sha256(key) != sha256


def _duplicate(outcome: Outcome, first_path: str) -> Outcome:
    return replace(outcome, research_key=None, row=None, duplicate_of=first_path)


def _conflict(outcome: Outcome, others: Sequence[str]) -> Outcome:
    detail = (
        f"{outcome.item.path} and {', '.join(others)} have one SOP Instance UID but different "
        "content after de-identification; neither is published over the other"
    )
    return replace(outcome, research_key=None, row=None, refusal=UID_CONFLICT, detail=detail)

"""Inputs that are one instance: duplicates and SOP Instance UID conflicts.

Outputs are filed under their (pseudonymised, injective) SOP Instance UID, so two inputs sharing
one would overwrite each other. Ingest drops byte-identical copies and refuses some conflicts, but
not every case reaches it (``mira deid`` on a folder has no ingest; a file re-sent with a changed
header after its ingest record was removed). Here, after de-identification:

- outputs with one UID and equal bytes (pixel data and header) are one instance: the first in
  path order is published, every other is a ``duplicate`` (counted, recorded on the gateway side);
- outputs with one UID and different bytes, or whose key the store already holds with other
  bytes, are a ``uid-conflict``: each such input is quarantined with both paths in its reason,
  and nothing is overwritten;
- an output whose UID the store already holds under another key (another patient or study: the
  same instance sent again with another PatientID, by a batch whose ingest did not know the
  first) is a ``uid-conflict`` naming the published key; one the store holds under the same key
  with the same bytes, published by another batch, is a ``duplicate`` of it (a rerun of the same
  batch republishes its own instances).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from storage import Store
from tasks import layout

if TYPE_CHECKING:
    from tasks.deid.stage import Outcome

UID_CONFLICT = "uid-conflict"
DUPLICATES_NAME = "duplicates.json"


@dataclass(frozen=True)
class PublishedInstance:
    """An instance the output store already holds: its key, and (from the catalog) its SHA-256
    and batch; empty where only the key is known (a ``mira deid`` output folder)."""

    key: str
    sha256: str = ""
    batch: str = ""


def published_instances(
    store: Store, batch: str | None = None, uids: Collection[str] | None = None
) -> dict[str, PublishedInstance]:
    """The instances ``store`` holds (those of ``uids`` only, when given), by SOP Instance UID:
    from the catalog of a research store (other batches than ``batch``), else from the keys
    below ``dicom/`` of an output folder."""
    wanted = None if uids is None else set(uids)
    if batch is None:
        found = {
            PurePosixPath(info.key).stem: PublishedInstance(info.key)
            for info in store.list(layout.DICOM + "/")
            if info.key.endswith(".dcm")
        }
        return {uid: i for uid, i in found.items() if wanted is None or uid in wanted}
    import pyarrow as pa  # the catalog of a research store: not loaded for an output folder
    import pyarrow.compute as pc

    from tasks.dataset import read_table

    table = read_table(store, "instances")
    if not table.num_rows or wanted == set():
        return {}
    table = table.select(["sop_instance_uid", "key", "sha256", "batch"])
    if wanted is not None:
        table = table.filter(pc.is_in(table["sop_instance_uid"], pa.array(sorted(wanted))))
    return {
        row["sop_instance_uid"]: PublishedInstance(row["key"], row["sha256"], row["batch"])
        for row in table.to_pylist()
        if row["batch"] != batch
    }


def instance_uids(outcomes: Sequence[Outcome]) -> set[str]:
    """The SOP Instance UIDs of the DICOM outputs staged for publication."""
    return {o.row["sop_instance_uid"] for o in outcomes if o.row and o.item.format != "slide"}


def settle_instances(
    outcomes: Sequence[Outcome],
    store: Store,
    published: Mapping[str, PublishedInstance] | None = None,
) -> list[Outcome]:
    """The outcomes with every duplicate marked and every UID conflict refused (same order);
    ``published`` are the instances the store already holds (:func:`published_instances`)."""
    published = published or {}
    by_uid: defaultdict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.row and outcome.research_key and outcome.item.format != "slide":
            by_uid[outcome.row["sop_instance_uid"]].append(outcome)
    settled: dict[int, Outcome] = {}
    for uid, group in by_uid.items():
        group.sort(key=lambda o: o.item.path)
        first = group[0]
        assert first.research_key and first.row
        before = published.get(uid)
        if len({o.row["sha256"] for o in group if o.row}) > 1:
            for outcome in group:
                others = [o.item.path for o in group if o is not outcome]
                settled[id(outcome)] = _conflict(outcome, others)
        elif before is not None and before.key != first.research_key:
            settled.update({id(o): _conflict(o, [_published_name(before)]) for o in group})
        elif _holds_other_bytes(store, first.research_key, first.row["sha256"]):
            name = f"{first.research_key} (already published)"
            settled.update({id(o): _conflict(o, [name]) for o in group})
        elif before is not None and before.batch and before.sha256 == first.row["sha256"]:
            settled.update({id(o): _duplicate(o, _published_name(before)) for o in group})
        else:
            settled.update({id(o): _duplicate(o, first.item.path) for o in group[1:]})
    return [settled.get(id(outcome), outcome) for outcome in outcomes]


def _published_name(instance: PublishedInstance) -> str:
    batch = f" by batch {instance.batch}" if instance.batch else ""
    return f"{instance.key} (already published{batch})"


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

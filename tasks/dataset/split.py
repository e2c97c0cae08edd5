"""Patient-level train/validation/test splits: stratified, and stable as the dataset grows.

The unit of assignment is the patient, so no patient's items are ever in two splits: a slide
linked to its patient (the upload's manifest names the patient, de-identification maps that to
the pseudonym the patient's DICOM files carry) goes with them. A slide whose upload named no
patient is its own unit (``slide:<slide id>``); the result counts such units.

Each patient gets a number ``u`` in [0, 1) from HMAC-SHA-256 keyed by the seed over the
patient ID; ``u`` against the cumulative ratios gives the patient's *hash split*. It depends
on nothing but (seed, patient, ratios), so it never changes as patients are added.

Balancing by stratum: a patient's stratum is the most frequent value of the chosen catalog
columns over their items (ties go to the smallest value). Within each stratum the target
counts are the ratios apportioned over the stratum's patients (largest remainder). Patients
already recorded in the split table keep their split for ever; new patients, in ``u`` order,
take their hash split while it has room in their stratum and otherwise the split with the
most room left. So existing patients never move, small strata come out as balanced as their
history allows, and in large strata almost every patient simply gets their hash split.
``balance=False`` uses the hash split alone (history-free, balanced only in expectation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mira.errors import InvalidInput
from storage import ObjectInfo, Store
from tasks.dataset import catalog

SPLIT_NAMES = ("train", "validation", "test")
SPLITS_TABLE = "splits"
DEFAULT_SPLIT = "default"
MISSING_VALUE = "-"
SLIDE_MODALITY = "SM"  # DICOM's modality code for slide microscopy
SLIDE_UNIT_PREFIX = "slide:"  # the unit of a slide whose upload named no patient
SPLITS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("patient_id", pa.string()),  # the unit of assignment (a pseudonymous patient ID)
        ("split", pa.string()),
        ("stratum", pa.string()),
        ("stratified_by", pa.string()),  # comma-separated catalog columns
        ("seed", pa.int64()),
        ("ratios", pa.string()),  # "train,validation,test", e.g. "0.7,0.15,0.15"
        ("items", pa.int64()),  # items in the dataset now (0: all excluded, assignment kept)
        ("created_at", pa.string()),  # ISO 8601 UTC, when the patient was first assigned
    ]
)
ITEM_COLUMNS = (
    "key",
    "kind",
    "unit",
    "modality",
    "batch",
    "mira_version",
    "deid_profile",
    "sha256",
    "bytes",
)


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of patients for train, validation and test; they sum to 1."""

    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise InvalidInput(f"split ratios must be >= 0 and sum to 1, got {self.text()}")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """``"0.7,0.15,0.15"`` (train, validation, test)."""
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError as err:
            raise InvalidInput(f"split ratios must be three numbers, got {text!r}") from err
        if len(values) != len(SPLIT_NAMES):
            raise InvalidInput(f"split ratios must be three numbers, got {text!r}")
        return cls(*values)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.validation, self.test)

    def text(self) -> str:
        return ",".join(f"{v:g}" for v in self.as_tuple())


@dataclass(frozen=True)
class BalanceRow:
    """Patients and items of one split within one stratum."""

    split: str
    stratum: str
    patients: int
    items: int


@dataclass(frozen=True)
class SplitResult:
    """What ``split_dataset`` recorded."""

    name: str
    seed: int
    ratios: str
    stratified_by: tuple[str, ...]
    patients: int
    new_patients: int
    items: int
    table_key: str
    balance_key: str
    balance: tuple[BalanceRow, ...] = field(default=())
    unlinked_slides: int = 0  # units that are a slide no upload linked to a patient

    def unlinked_note(self) -> str:
        """The report line on slides that no upload linked to a patient."""
        return f"slides without a patient link (each its own split unit): {self.unlinked_slides}"


def unit_interval(seed: int, patient_id: str) -> float:
    """The patient's keyed hash mapped to [0, 1): HMAC-SHA-256(seed, patient), top 53 bits.

    53 bits is a double's mantissa, so the value is exact and never rounds up to 1.0.
    """
    digest = hmac.new(str(seed).encode(), patient_id.encode(), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def hash_split(u: float, ratios: SplitRatios) -> str:
    """The split whose cumulative-ratio interval holds ``u``."""
    bound = 0.0
    for name, ratio in zip(SPLIT_NAMES, ratios.as_tuple(), strict=True):
        bound += ratio
        if u < bound:
            return name
    # Ratios sum to 1 only within float error: the remainder goes to the last non-empty split.
    return next(n for n, r in zip(SPLIT_NAMES[::-1], ratios.as_tuple()[::-1], strict=True) if r)


def apportion(count: int, ratios: SplitRatios) -> dict[str, int]:
    """``count`` patients shared by the ratios (largest remainder; ties in split order)."""
    quotas = [count * r for r in ratios.as_tuple()]
    shares = [int(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: count - sum(shares)]:
        shares[i] += 1
    return dict(zip(SPLIT_NAMES, shares, strict=True))


def assign_splits(
    strata: Mapping[str, str],
    ratios: SplitRatios,
    seed: int,
    previous: Mapping[str, str] | None = None,
    *,
    balance: bool = True,
) -> dict[str, str]:
    """The split of every patient in ``strata`` (patient -> stratum); ``previous`` never moves."""
    previous = previous or {}
    result = {p: previous[p] for p in strata if p in previous}
    by_stratum: dict[str, list[str]] = {}
    for patient, stratum in strata.items():
        by_stratum.setdefault(stratum, []).append(patient)
    for members in by_stratum.values():
        new = sorted((unit_interval(seed, p), p) for p in members if p not in previous)
        if not balance:
            result.update({p: hash_split(u, ratios) for u, p in new})
            continue
        room = apportion(len(members), ratios)
        for patient in members:
            if patient in previous and previous[patient] in room:
                room[previous[patient]] -= 1
        result.update(_fill_stratum(new, room, ratios))
    return result


def _fill_stratum(
    new: Sequence[tuple[float, str]], room: dict[str, int], ratios: SplitRatios
) -> dict[str, str]:
    """Hash split while it has room, else the split with the most room (in ``u`` order)."""
    chosen: dict[str, str] = {}
    deferred: list[tuple[float, str]] = []
    for u, patient in new:
        preferred = hash_split(u, ratios)
        if room[preferred] > 0:
            chosen[patient] = preferred
            room[preferred] -= 1
        else:
            deferred.append((u, patient))
    for u, patient in deferred:
        best = max(SPLIT_NAMES, key=lambda s: (room[s], -SPLIT_NAMES.index(s)))
        if room[best] > 0:
            chosen[patient] = best
            room[best] -= 1
        else:  # earlier patients already fill every split of this stratum
            chosen[patient] = hash_split(u, ratios)
    return chosen


def _text_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return pc.cast(table.column(name), pa.string())
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def _item_table(table: pa.Table, kind: str, extra: Sequence[str]) -> pa.Table:
    """Instances or slides in one shape: the item columns plus the stratification columns."""
    length = table.num_rows
    columns = {name: _text_column(table, name) for name in ITEM_COLUMNS if name != "bytes"}
    columns["kind"] = pa.chunked_array([pa.array([kind] * length, pa.string())])
    patient = pc.fill_null(_text_column(table, "patient_id"), "")
    if kind == "slide":
        slide = pc.fill_null(_text_column(table, "slide_id"), "")
        slide = pc.if_else(pc.equal(slide, ""), _key_stem(_text_column(table, "key")), slide)
        unit = pc.binary_join_element_wise(SLIDE_UNIT_PREFIX, slide, "")
        columns["unit"] = pc.if_else(pc.equal(patient, ""), unit, patient)
        columns["modality"] = pc.fill_null(columns["modality"], SLIDE_MODALITY)
    else:
        if length and pc.any(pc.equal(patient, "")).as_py():
            raise InvalidInput("catalog instances without a patient_id cannot be split")
        columns["unit"] = patient
    size = table.column("bytes") if "bytes" in table.column_names else pa.nulls(length, pa.int64())
    columns["bytes"] = pc.cast(size, pa.int64())
    for name in extra:
        if name not in columns:
            columns[name] = _text_column(table, name)
    return pa.table(columns)


def _key_stem(keys: pa.ChunkedArray) -> pa.ChunkedArray:
    """``slides/<slide>.tiff`` -> ``<slide>``."""
    base = pc.replace_substring_regex(keys, r"^.*/", "")
    return pc.replace_substring_regex(base, r"\.[^.]*$", "")


def dataset_items(store: Store, extra_columns: Sequence[str] = ()) -> pa.Table:
    """Every catalog instance and slide that may enter a dataset, excluded keys removed.

    Columns: ``ITEM_COLUMNS`` (``unit`` is the patient a split assigns) plus
    ``extra_columns`` as text; a column one table lacks is null for that table's rows.
    """
    instances = catalog.read_table(store, "instances")
    slides = catalog.read_table(store, "slides")
    known = set(instances.column_names) | set(slides.column_names) | {"modality"}
    unknown = [c for c in extra_columns if c not in known]
    if unknown:
        raise InvalidInput(f"no catalog column {', '.join(unknown)} in instances or slides")
    parts = [_item_table(instances, "instance", extra_columns)]
    parts.append(_item_table(slides, "slide", extra_columns))
    items = pa.concat_tables(parts)
    excluded = catalog.excluded_keys(store)
    if excluded:
        keep = pc.invert(pc.is_in(items.column("key"), pa.array(sorted(excluded), pa.string())))
        items = items.filter(keep)
    return items.sort_by("key")


def stratum_column(items: pa.Table, columns: Sequence[str]) -> pa.ChunkedArray:
    """Each item's stratum: its values of ``columns`` joined by ``|`` (missing as ``-``)."""
    if not columns:
        return pa.chunked_array([pa.array([MISSING_VALUE] * items.num_rows, pa.string())])
    values = [
        pc.if_else(pc.equal(pc.fill_null(items.column(c), ""), ""), MISSING_VALUE, items.column(c))
        for c in columns
    ]
    return pc.binary_join_element_wise(*[pc.fill_null(v, MISSING_VALUE) for v in values], "|")


def patient_strata(items: pa.Table, columns: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Each patient's stratum (most frequent over their items; ties: smallest) and item count."""
    counts = (
        pa.table({"unit": items.column("unit"), "stratum": stratum_column(items, columns)})
        .group_by(["unit", "stratum"])
        .aggregate([([], "count_all")])
        .sort_by([("unit", "ascending"), ("count_all", "descending"), ("stratum", "ascending")])
    )
    result: dict[str, tuple[str, int]] = {}
    for row in counts.to_pylist():
        unit, stratum, count = row["unit"], row["stratum"], row["count_all"]
        if unit in result:
            result[unit] = (result[unit][0], result[unit][1] + count)
        else:
            result[unit] = (stratum, count)
    return result


def batch_split_sizes(store: Store, name: str, batch: str) -> dict[str, int]:
    """How many of ``batch``'s split units (patients) each split of ``name`` holds."""
    items = dataset_items(store)
    units = set(items.filter(pc.equal(items.column("batch"), batch)).column("unit").to_pylist())
    assigned = patient_splits(store, name)
    sizes: dict[str, int] = {}
    for unit in units:
        if unit in assigned:
            sizes[assigned[unit]] = sizes.get(assigned[unit], 0) + 1
    return dict(sorted(sizes.items()))


def split_part(store: Store, name: str) -> pa.Table | None:
    """The recorded assignment of split ``name``, or None when it was never made."""
    return catalog.read_part(store, SPLITS_TABLE, name)


def patient_splits(store: Store, name: str = DEFAULT_SPLIT) -> dict[str, str]:
    """Patient -> split for split ``name``; fails when ``mira split`` never ran for it."""
    table = split_part(store, name)
    if table is None:
        raise InvalidInput(f"no split named {name!r}: run `mira split --name {name}` first")
    return dict(zip(table["patient_id"].to_pylist(), table["split"].to_pylist(), strict=True))


def _check_same_settings(previous: pa.Table, seed: int, ratios: SplitRatios, by: str) -> None:
    """A split name is one (seed, ratios, columns) for life; other settings need a new name."""
    if not previous.num_rows:
        return
    first = previous.slice(0, 1).to_pylist()[0]
    if (first["seed"], first["ratios"], first["stratified_by"]) != (seed, ratios.text(), by):
        raise InvalidInput(
            f"split {first['name']!r} was made with seed {first['seed']}, ratios "
            f"{first['ratios']}, stratified by {first['stratified_by'] or 'nothing'}; "
            "use another --name for other settings"
        )


def split_dataset(
    store: Store,
    *,
    name: str = DEFAULT_SPLIT,
    stratify_by: Sequence[str] = ("modality",),
    ratios: SplitRatios | None = None,
    seed: int = 0,
    balance: bool = True,
    now: datetime | None = None,
) -> SplitResult:
    """Assign every patient of the dataset to a split, record it and its balance report."""
    ratios = ratios or SplitRatios()
    by = ",".join(stratify_by)
    catalog.part_key(SPLITS_TABLE, name)  # validates the name before any work
    items = dataset_items(store, stratify_by)
    strata = patient_strata(items, stratify_by)
    previous_table = split_part(store, name)
    previous_rows = previous_table.to_pylist() if previous_table is not None else []
    if previous_table is not None:
        _check_same_settings(previous_table, seed, ratios, by)
    previous = {row["patient_id"]: row for row in previous_rows}
    assigned = assign_splits(
        {p: s for p, (s, _) in strata.items()},
        ratios,
        seed,
        {p: row["split"] for p, row in previous.items()},
        balance=balance,
    )
    stamp = (now or datetime.now(UTC)).isoformat()
    rows = [
        {
            "name": name,
            "patient_id": patient,
            "split": assigned[patient],
            "stratum": stratum,
            "stratified_by": by,
            "seed": seed,
            "ratios": ratios.text(),
            "items": count,
            "created_at": previous[patient]["created_at"] if patient in previous else stamp,
        }
        for patient, (stratum, count) in sorted(strata.items())
    ]
    kept = [dict(row, items=0) for p, row in previous.items() if p not in strata]
    table = pa.Table.from_pylist(sorted(rows + kept, key=lambda r: r["patient_id"]), SPLITS_SCHEMA)
    part = catalog.write_part(store, SPLITS_TABLE, name, table)
    report = balance_report(table, items)
    unlinked = sum(1 for unit in strata if unit.startswith(SLIDE_UNIT_PREFIX))
    document: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "ratios": ratios.text(),
        "stratified_by": list(stratify_by),
        "unlinked_slides": unlinked,
        "rows": [row.__dict__ for row in report],
    }
    balance_info = write_balance(store, name, document, stamp)
    return SplitResult(
        name=name,
        seed=seed,
        ratios=ratios.text(),
        stratified_by=tuple(stratify_by),
        patients=len(strata),
        new_patients=sum(1 for p in strata if p not in previous),
        items=items.num_rows,
        table_key=part.key,
        balance_key=balance_info.key,
        balance=report,
        unlinked_slides=unlinked,
    )


def write_balance(store: Store, name: str, balance: dict[str, Any], stamp: str) -> ObjectInfo:
    """Publish the balance report, unless the stored one says the same (reruns rewrite nothing)."""
    key = balance_key(name)
    if store.exists(key):
        stored = store.read_json(key)
        if {k: v for k, v in stored.items() if k != "created_at"} == json.loads(
            json.dumps(balance)
        ):
            return store.info(key)
    return store.write_json(key, {**balance, "created_at": stamp})


def balance_key(name: str) -> str:
    """Where the balance report of split ``name`` is stored."""
    return f"splits/{name}/balance.json"


def balance_report(assignment: pa.Table, items: pa.Table) -> tuple[BalanceRow, ...]:
    """Patients and items per (split, stratum) for the patients that have items now."""
    active = {
        row["patient_id"]: (row["split"], row["stratum"])
        for row in assignment.to_pylist()
        if row["items"]
    }
    patients: Counter[tuple[str, str]] = Counter(active.values())
    item_counts: Counter[tuple[str, str]] = Counter()
    for unit in items.column("unit").to_pylist():
        if unit in active:
            item_counts[active[unit]] += 1
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    return tuple(
        BalanceRow(
            split=split, stratum=stratum, patients=count, items=item_counts[(split, stratum)]
        )
        for (split, stratum), count in sorted(
            patients.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
        )
    )

"""Patient-level splits: deterministic, patient-disjoint, stratified, and stable as data grows."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mira.cli import snapshot as cli_snapshot
from mira.cli.root import common
from mira.errors import InvalidInput
from storage import Store
from tasks.dataset import catalog
from tasks.dataset.split import (
    SPLIT_NAMES,
    SplitRatios,
    apportion,
    assign_splits,
    balance_key,
    dataset_items,
    hash_split,
    patient_splits,
    patient_strata,
    split_dataset,
    unit_interval,
)

app = typer.Typer()
app.callback()(common)
cli_snapshot.register(app)
runner = CliRunner()

patient_ids = st.text(alphabet="0123456789ABCDEF.", min_size=1, max_size=12)
strata_maps = st.dictionaries(patient_ids, st.sampled_from(["CT", "MR", "SM"]), max_size=60)
ratio_sets = st.sampled_from(
    [SplitRatios(), SplitRatios(0.8, 0.1, 0.1), SplitRatios(0.5, 0.5, 0.0), SplitRatios(1, 0, 0)]
)


@settings(max_examples=60, deadline=None)
@given(strata=strata_maps, ratios=ratio_sets, seed=st.integers(0, 2**31), balance=st.booleans())
def test_assignment_is_deterministic_and_total(
    strata: dict[str, str], ratios: SplitRatios, seed: int, balance: bool
) -> None:
    first = assign_splits(strata, ratios, seed, balance=balance)
    again = assign_splits(dict(reversed(list(strata.items()))), ratios, seed, balance=balance)
    assert first == again
    # One split per patient (a mapping cannot put a patient in two), and every one assigned.
    assert set(first) == set(strata)
    assert set(first.values()) <= set(SPLIT_NAMES)
    # A split with ratio 0 never receives anyone.
    empty = {name for name, r in zip(SPLIT_NAMES, ratios.as_tuple(), strict=True) if r == 0}
    assert not empty & set(first.values())


@settings(max_examples=60, deadline=None)
@given(old=strata_maps, new=strata_maps, seed=st.integers(0, 2**31), balance=st.booleans())
def test_adding_patients_never_moves_an_existing_patient(
    old: dict[str, str], new: dict[str, str], seed: int, balance: bool
) -> None:
    before = assign_splits(old, SplitRatios(), seed, balance=balance)
    grown = {**new, **old}
    after = assign_splits(grown, SplitRatios(), seed, before, balance=balance)
    assert {p: after[p] for p in old} == before
    assert set(after) == set(grown)


@settings(max_examples=60, deadline=None)
@given(old=strata_maps, new=strata_maps, seed=st.integers(0, 2**31))
def test_hash_split_alone_is_history_free(
    old: dict[str, str], new: dict[str, str], seed: int
) -> None:
    """Without balancing, a patient's split is a function of (seed, patient, ratios) only."""
    grown = {**new, **old}
    alone = assign_splits(grown, SplitRatios(), seed, balance=False)
    stepwise = assign_splits(
        grown,
        SplitRatios(),
        seed,
        assign_splits(old, SplitRatios(), seed, balance=False),
        balance=False,
    )
    assert alone == stepwise
    assert all(alone[p] == hash_split(unit_interval(seed, p), SplitRatios()) for p in grown)


@settings(max_examples=60, deadline=None)
@given(strata=strata_maps, seed=st.integers(0, 2**31))
def test_each_stratum_is_balanced_to_the_ratios(strata: dict[str, str], seed: int) -> None:
    assigned = assign_splits(strata, SplitRatios(), seed)
    for stratum in set(strata.values()):
        members = [p for p, s in strata.items() if s == stratum]
        counts = Counter(assigned[p] for p in members)
        assert {n: counts.get(n, 0) for n in SPLIT_NAMES} == apportion(len(members), SplitRatios())


def test_large_strata_mostly_keep_their_hash_split() -> None:
    """Balancing corrects only at the margins: most patients get the plain hash split."""
    strata = {f"P{i}": "CT" for i in range(2000)}
    assigned = assign_splits(strata, SplitRatios(), seed=7)
    agree = sum(assigned[p] == hash_split(unit_interval(7, p), SplitRatios()) for p in strata)
    assert agree / len(strata) > 0.9


def test_seed_changes_the_split_and_ratios_are_checked() -> None:
    strata = {f"P{i}": "CT" for i in range(200)}
    assert assign_splits(strata, SplitRatios(), 1) != assign_splits(strata, SplitRatios(), 2)
    assert SplitRatios.parse("0.6,0.2,0.2") == SplitRatios(0.6, 0.2, 0.2)
    for bad in ("0.5,0.5", "0.7,0.2,0.2", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(InvalidInput):
            SplitRatios.parse(bad)


def write_instances(
    store: Store, batch: str, patients: dict[str, list[str]], label: str = ""
) -> list[dict[str, object]]:
    """One small object per (patient, modality) item, and the catalog part of the batch."""
    rows: list[dict[str, object]] = []
    for patient, modalities in patients.items():
        for i, modality in enumerate(modalities):
            key = f"dicom/{patient}/st-{batch}/se{i}/{i}.dcm"
            data = f"{batch}/{patient}/{i}".encode()
            store.write_bytes(key, data)
            rows.append(
                {
                    "batch": batch,
                    "key": key,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "patient_id": patient,
                    "modality": modality,
                    "body_part": label,
                }
            )
    catalog.write_part(store, "instances", batch, rows)
    return rows


def test_patient_stratum_is_most_frequent_value_ties_smallest(local_store: Store) -> None:
    write_instances(local_store, "b1", {"P1": ["MR", "CT", "MR"], "P2": ["MR", "CT"]})
    strata = patient_strata(dataset_items(local_store), ["modality"])
    assert strata == {"P1": ("MR", 3), "P2": ("CT", 2)}


def test_split_dataset_is_patient_disjoint_and_stable_as_batches_arrive(local_store: Store) -> None:
    first = {f"P{i:02d}": ["CT", "CT"] if i % 2 else ["MR"] for i in range(20)}
    rows = write_instances(local_store, "b1", first)
    catalog.write_part(
        local_store,
        "review",
        "b1",
        [{"key": rows[1]["key"], "batch": "b1", "status": "rejected", "updated_at": "2026-01-01"}],
    )
    result = split_dataset(local_store, seed=3)
    before = patient_splits(local_store)
    assert result.patients == 20 and result.items == len(rows) - 1  # the rejected item is out
    # Patient-disjoint at the item level: each item's split is its patient's.
    items = dataset_items(local_store)
    per_patient: dict[str, set[str]] = {}
    for unit in items.column("unit").to_pylist():
        per_patient.setdefault(unit, set()).add(before[unit])
    assert all(len(s) == 1 for s in per_patient.values())
    report = local_store.read_json(balance_key("default"))
    assert sum(r["patients"] for r in report["rows"]) == 20
    assert sum(r["items"] for r in report["rows"]) == len(rows) - 1

    # A new batch: new patients, and new items (another modality) for existing ones.
    write_instances(local_store, "b2", {**{f"Q{i}": ["CT"] for i in range(15)}, "P01": ["MR"] * 5})
    grown = split_dataset(local_store, seed=3)
    after = patient_splits(local_store)
    assert {p: after[p] for p in before} == before
    assert grown.new_patients == 15
    table = catalog.read_part(local_store, "splits", "default")
    assert table is not None
    assert set(table.column_names) >= {
        "patient_id",
        "split",
        "stratum",
        "seed",
        "ratios",
        "created_at",
    }
    p01 = next(r for r in table.to_pylist() if r["patient_id"] == "P01")
    # One CT left (the other was rejected) and five new MR: the stratum followed the data,
    # the split did not.
    assert p01["stratum"] == "MR" and p01["items"] == 6


def test_a_split_name_keeps_its_settings(local_store: Store) -> None:
    write_instances(local_store, "b1", {"P1": ["CT"]})
    split_dataset(local_store, seed=1)
    with pytest.raises(InvalidInput, match="another --name"):
        split_dataset(local_store, seed=2)
    other = split_dataset(local_store, name="seed2", seed=2)
    assert other.name == "seed2"
    with pytest.raises(InvalidInput, match="no catalog column"):
        split_dataset(local_store, name="x", stratify_by=["label_that_does_not_exist"])


def test_slides_without_a_patient_are_their_own_unit(local_store: Store) -> None:
    write_instances(local_store, "b1", {"P1": ["CT"]})
    local_store.write_bytes("slides/S9.tiff", b"tiff")
    catalog.write_part(
        local_store,
        "slides",
        "b1",
        [
            {"batch": "b1", "key": "slides/S9.tiff", "slide_id": "S9", "patient_id": ""},
            {"batch": "b1", "key": "slides/S8.tiff", "slide_id": "S8", "patient_id": "P1"},
        ],
    )
    split_dataset(local_store)
    assignment = patient_splits(local_store)
    assert set(assignment) == {"P1", "slide:S9"}
    strata = patient_strata(dataset_items(local_store), ["modality"])
    assert strata["slide:S9"] == ("SM", 1)


def test_the_split_report_counts_unlinked_slides(tmp_path: Path) -> None:
    from storage import open_store

    store = open_store(tmp_path / "research")
    write_instances(store, "b1", {"P1": ["CT"], "P2": ["MR"]})
    slides = [
        {"batch": "b1", "key": f"slides/{s}.tiff", "slide_id": s, "patient_id": p}
        for s, p in (("S7", ""), ("S8", "P1"), ("S9", ""))
    ]
    catalog.write_part(store, "slides", "b1", slides)
    result = split_dataset(store)
    assert result.patients == 4 and result.unlinked_slides == 2
    assert store.read_json(balance_key("default"))["unlinked_slides"] == 2
    assignment = patient_splits(store)
    assert "slide:S8" not in assignment  # the linked slide went with P1
    output = runner.invoke(app, ["--research", str(tmp_path / "research"), "split"]).output
    assert "slides without a patient link (each its own split unit): 2" in output, output


def test_split_command_prints_the_balance_table(tmp_path: Path) -> None:
    from storage import open_store

    store = open_store(tmp_path / "research")
    write_instances(store, "b1", {f"P{i}": ["CT"] for i in range(10)}, label="chest")
    result = runner.invoke(
        app,
        [
            "--research",
            str(tmp_path / "research"),
            "split",
            "--by",
            "modality",
            "--by",
            "body_part",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "CT|chest" in result.output and "train" in result.output
    assert "10 patients (10 new)" in result.output

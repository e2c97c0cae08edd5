"""The GX suites on real catalog batches: a clean batch passes; each defect fails the right
expectation with the right severity, and a ``fail`` keeps the whole batch out of splits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from storage import Store
from tasks.dataset import catalog
from tasks.quality.stage import QualitySummary, assess_batch, read_validation
from tests.test_quality_data import (
    original_files,
    pyramid_tiff,
    tissue_image,
    write_dicom_batch,
    write_slide_batch,
)


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster.scheduler_address


def validate(
    store: Store, batch: str, dask_address: str, identifiers: tuple[str, ...] = ()
) -> QualitySummary:
    return assess_batch(store, batch, identifiers=identifiers, dask_address=dask_address)


def outcomes(store: Store, batch: str) -> dict[str, dict[str, Any]]:
    """The batch-level rows of the quality table, by check."""
    rows = catalog.read_table(store, "quality").to_pylist()
    return {r["check"]: r for r in rows if r["batch"] == batch and r["key"] == ""}


def test_clean_batch_passes_every_expectation(local_store: Store, dask_address: str) -> None:
    keys = write_dicom_batch(local_store, "clean", original_files())
    summary = validate(local_store, "clean", dask_address)
    assert summary.verdict == "pass"
    assert summary.failed_checks == () and summary.warned_checks == ()
    assert summary.instances == 4 and summary.items_checked == 4
    assert summary.queued_for_review == ()
    checks = outcomes(local_store, "clean")
    assert len(checks) == summary.expectations > 30
    assert all(row["passed"] for row in checks.values())
    assert {"instances.unique-sop-instance-uid", "series.consistent-slice-spacing"} <= set(checks)
    assert not set(keys) & catalog.excluded_keys(local_store)
    assert read_validation(local_store, "clean")["verdict"] == "pass"


DEFECTS: dict[str, tuple[dict[str, Any], str]] = {
    "duplicate-uid": ({"sop_instance_uid": "2.25.3001.0"}, "instances.unique-sop-instance-uid"),
    "person-name": ({"manufacturer": "DOE^JOHN"}, "instances.no-person-names:manufacturer"),
    "bad-modality": ({"modality": "XX"}, "instances.modality-allowed"),
    "zero-spacing": (
        {"pixel_spacing_row": 0.0},
        "instances.pixel-spacing-plausible:pixel_spacing_row",
    ),
    "negative-spacing": (
        {"pixel_spacing_col": -0.5},
        "instances.pixel-spacing-plausible:pixel_spacing_col",
    ),
    "identity-kept": ({"patient_identity_removed": "NO"}, "instances.identity-removed"),
    "missing-patient": ({"patient_id": None}, "instances.required-values:patient_id"),
    "date-in-text": ({"body_part": "CHEST 12/03/2019"}, "instances.no-dates-in-text:body_part"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_fails_the_right_expectation_and_blocks_the_batch(
    local_store: Store, dask_address: str, defect: str
) -> None:
    change, check = DEFECTS[defect]
    keys = write_dicom_batch(local_store, "bad", original_files(), {1: change})
    good = write_dicom_batch(local_store, "good", original_files())
    summary = validate(local_store, "bad", dask_address)
    validate(local_store, "good", dask_address)
    assert summary.verdict == "fail"
    assert summary.failed_checks == (check,)
    row = outcomes(local_store, "bad")[check]
    assert (row["severity"], row["passed"]) == ("fail", False)
    assert row["score"] >= 1  # rows unexpected (both rows of a duplicate)
    assert keys[1] in row["detail"]
    # The whole batch is out of splits and snapshots; the other batch is not.
    excluded = catalog.excluded_keys(local_store)
    assert set(keys) <= excluded
    assert not set(good) & excluded


def test_identifiers_of_the_batch_are_found_without_being_stored(
    local_store: Store, dask_address: str
) -> None:
    write_dicom_batch(
        local_store, "ids", original_files(), {2: {"model": "St Elsewhere Radiology 3"}}
    )
    summary = validate(local_store, "ids", dask_address, identifiers=("ST ELSEWHERE", "x"))
    assert summary.failed_checks == ("instances.no-batch-identifiers",)
    for obj in local_store.list("quality/"):
        assert b"ELSEWHERE" not in local_store.read_bytes(obj.key).upper(), obj.key


def test_uneven_slice_spacing_is_a_warning_only(local_store: Store, dask_address: str) -> None:
    write_dicom_batch(local_store, "gap", original_files(), {2: {"slice_position": 9.0}})
    summary = validate(local_store, "gap", dask_address)
    assert summary.verdict == "pass"
    assert summary.warned_checks == ("series.consistent-slice-spacing",)
    row = outcomes(local_store, "gap")["series.consistent-slice-spacing"]
    assert (row["severity"], row["passed"]) == ("warn", False)
    assert "dicom/gap/2.25.1001/2.25.2001.0/" in row["detail"]
    assert not catalog.excluded_keys(local_store)


@pytest.fixture(scope="module")
def slide_tiff() -> bytes:
    return pyramid_tiff(tissue_image(1024), levels=3)


@pytest.mark.parametrize(
    ("change", "check", "severity", "verdict"),
    [
        ({}, None, None, "pass"),
        ({"mpp": None}, "slides.mpp-present", "fail", "fail"),
        ({"mpp": 250.0}, "slides.mpp-plausible", "fail", "fail"),
        ({"levels": 1}, "slides.pyramid-levels", "warn", "pass"),
    ],
)
def test_slide_expectations(
    local_store: Store,
    dask_address: str,
    slide_tiff: bytes,
    change: dict[str, Any],
    check: str | None,
    severity: str | None,
    verdict: str,
) -> None:
    write_slide_batch(local_store, "wsi", [("s1", slide_tiff), ("s2", slide_tiff)], {0: change})
    summary = validate(local_store, "wsi", dask_address)
    assert summary.verdict == verdict
    failing = {c: r for c, r in outcomes(local_store, "wsi").items() if not r["passed"]}
    if check is None:
        assert failing == {}
    else:
        assert set(failing) == {check}
        assert failing[check]["severity"] == severity

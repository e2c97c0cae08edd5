"""Image QA on real images: pydicom's bundled files, a generated slide and the real Aperio
slide when present. Degraded versions must be flagged by the right check, originals never."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from mira.errors import TransientStoreError
from storage import Store, open_store
from tasks import layout
from tasks.quality.config import ImageQAConfig, load_quality_config
from tasks.quality.image_qa import (
    ItemReport,
    QAItem,
    assess_item,
    assess_items,
    multiscale_paths,
    thumbnail_key,
)
from tests.relay import Relay
from tests.seaweedfs import SeaweedServer
from tests.test_quality_data import (
    CMU_SLIDE,
    DEGRADATIONS,
    ORIGINALS,
    blur_rgb,
    degraded,
    pen_marked,
    pyramid_tiff,
    tissue_image,
)


@pytest.fixture(scope="module")
def config() -> ImageQAConfig:
    return load_quality_config().image_qa


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return tissue_image()


def failed(report: ItemReport) -> set[str]:
    return {c.check for c in report.checks if not c.passed}


def judge_dicom(store: Store, config: ImageQAConfig, name: str, data: bytes) -> ItemReport:
    key = f"dicom/p/s/se/{name}"
    store.write_bytes(key, data)
    return assess_item(store, QAItem(key, "instance"), config)


@pytest.mark.parametrize("name", ORIGINALS)
def test_original_images_pass_every_check(
    local_store: Store, config: ImageQAConfig, name: str
) -> None:
    report = judge_dicom(local_store, config, name, degraded(name, lambda p: p))
    assert [c.check for c in report.checks] == ["resolution", "contrast", "blur", "empty"]
    assert failed(report) == set(), report.checks
    assert not report.needs_review
    assert report.thumbnail_key == ""
    assert not local_store.exists(thumbnail_key(report.key))


@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
@pytest.mark.parametrize("name", ORIGINALS)
def test_degraded_images_are_flagged_by_the_right_check(
    local_store: Store, config: ImageQAConfig, name: str, degradation: str
) -> None:
    change, check = DEGRADATIONS[degradation]
    report = judge_dicom(local_store, config, f"{degradation}-{name}", degraded(name, change))
    assert check in failed(report), report.checks
    assert report.needs_review
    assert check in report.reasons
    # A person sees the item: a PNG thumbnail is in the research store.
    assert report.thumbnail_key == thumbnail_key(report.key)
    assert local_store.read_bytes(report.thumbnail_key).startswith(b"\x89PNG")


def test_scores_and_thresholds_are_recorded(local_store: Store, config: ImageQAConfig) -> None:
    report = judge_dicom(local_store, config, "ct", degraded("CT_small.dcm", lambda p: p))
    by_check = {c.check: c for c in report.checks}
    assert by_check["resolution"].score == 128
    assert by_check["resolution"].threshold == config.dicom.checks.resolution.threshold
    assert all(c.severity == "fail" and c.score is not None for c in report.checks)


def test_thresholds_come_from_configuration(local_store: Store, config: ImageQAConfig) -> None:
    """A per-modality threshold turns CT_small (128 px) into a finding without code changes."""
    checks = config.dicom.checks.model_copy(
        update={
            "resolution": config.dicom.checks.resolution.model_copy(
                update={"by_modality": {"CT": 256}}
            )
        }
    )
    strict = config.model_copy(update={"dicom": config.dicom.model_copy(update={"checks": checks})})
    ct = judge_dicom(local_store, strict, "ct", degraded("CT_small.dcm", lambda p: p))
    mr = judge_dicom(local_store, strict, "mr", degraded("MR_small.dcm", lambda p: p))
    assert failed(ct) == {"resolution"}
    assert failed(mr) == set()


def test_objects_without_pictures_are_skipped(local_store: Store, config: ImageQAConfig) -> None:
    from tests.test_quality_data import TEST_FILES

    report = judge_dicom(local_store, config, "seg", (TEST_FILES / "liver_1frame.dcm").read_bytes())
    assert [c.check for c in report.checks] == ["image_qa"]
    assert not report.needs_review


@pytest.mark.parametrize("cut", ["not-dicom", "truncated-pixels"])
def test_unreadable_object_is_queued_not_fatal(
    local_store: Store, config: ImageQAConfig, cut: str
) -> None:
    from tests.test_quality_data import TEST_FILES

    whole = (TEST_FILES / "CT_small.dcm").read_bytes()
    data = b"not a DICOM file at all" if cut == "not-dicom" else whole[: len(whole) - 9000]
    report = judge_dicom(local_store, config, f"{cut}.dcm", data)
    assert failed(report) == {"readable"}
    assert report.needs_review


def judge_slide(store: Store, config: ImageQAConfig, name: str, data: bytes) -> ItemReport:
    key = f"slides/{name}.tiff"
    store.write_bytes(key, data)
    return assess_item(store, QAItem(key, "slide"), config)


SLIDE_CASES: dict[str, tuple[Callable[[Any], Any], set[str]]] = {
    "original": (lambda image: image, set()),
    "out-of-focus": (lambda image: blur_rgb(image, 6.0), {"out_of_focus"}),
    "pen-marked": (pen_marked, {"pen_marks"}),
    "empty-glass": (lambda image: np.full_like(image, 243), {"tissue_fraction"}),
}


@pytest.mark.parametrize("case", sorted(SLIDE_CASES))
def test_generated_slide_checks(
    local_store: Store, config: ImageQAConfig, tissue: np.ndarray, case: str
) -> None:
    change, expected = SLIDE_CASES[case]
    report = judge_slide(local_store, config, case, pyramid_tiff(change(tissue)))
    assert [c.check for c in report.checks] == ["tissue_fraction", "pen_marks", "out_of_focus"]
    assert failed(report) == expected, report.checks
    assert report.needs_review == bool(expected)
    assert bool(report.thumbnail_key) == bool(expected)


@pytest.mark.skipif(not CMU_SLIDE.exists(), reason="real Aperio slide not fetched (make fixtures)")
def test_real_aperio_slide_passes_and_its_blurred_copy_is_flagged(
    local_store: Store, config: ImageQAConfig
) -> None:
    original = judge_slide(local_store, config, "cmu", CMU_SLIDE.read_bytes())
    assert failed(original) == set(), original.checks
    pixels = tifffile.imread(CMU_SLIDE, series=0)
    blurred = judge_slide(
        local_store, config, "cmu-blurred", pyramid_tiff(blur_rgb(pixels, 3.0), 1)
    )
    assert failed(blurred) == {"out_of_focus"}, blurred.checks


def write_pyramid(store: Store, key: str, image: np.ndarray) -> None:
    """An OME-NGFF 0.5 pyramid (c, y, x) of three levels for the slide at ``key``."""
    group = zarr.open_group(store.zarr_store(layout.pyramid_key(key)), mode="w")
    datasets = []
    for level, factor in enumerate((1, 2, 4)):
        data = np.moveaxis(image[::factor, ::factor], -1, 0)
        array = group.create_array(
            str(level), shape=data.shape, dtype="uint8", chunks=(3, 256, 256)
        )
        array[:] = data
        datasets.append({"path": str(level)})
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": datasets}]}
    assert multiscale_paths(dict(group.attrs)) == ["0", "1", "2"]


def test_slide_is_read_from_its_pyramid_when_one_exists(
    local_store: Store, config: ImageQAConfig, tissue: np.ndarray
) -> None:
    """An OME-NGFF 0.5 pyramid (c, y, x) wins over the TIFF: here the TIFF is empty glass."""
    key = "slides/both.tiff"
    local_store.write_bytes(key, pyramid_tiff(np.full_like(tissue, 243)))
    write_pyramid(local_store, key, tissue)
    report = assess_item(local_store, QAItem(key, "slide"), config)
    assert failed(report) == set(), report.checks


@pytest.mark.s3
def test_a_network_blip_while_reading_a_pyramid_is_retryable_not_a_finding(
    s3_server: SeaweedServer,
    config: ImageQAConfig,
    tissue: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 server drops away after the pyramid is found: the item is not judged unreadable
    (a ``readable: fail`` finding would queue a good slide for review); the task fails with a
    ``TransientStoreError``, which Prefect retries."""
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.01)
    with Relay(s3_server.config) as relay:
        store = open_store(f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}", relay.config)
        key = "slides/blip.tiff"
        store.write_bytes(key, pyramid_tiff(tissue))
        write_pyramid(store, key, tissue)
        found = store.exists

        def found_then_outage(name: str) -> bool:
            answer = found(name)
            relay.cut()
            return answer

        monkeypatch.setattr(store, "exists", found_then_outage)
        with pytest.raises(TransientStoreError):
            assess_item(store, QAItem(key, "slide"), config)


def test_pyramid_key_follows_the_slide_name() -> None:
    assert layout.pyramid_key("slides/abc123.tiff") == "pyramids/abc123.ome.zarr"


def test_items_are_judged_on_dask_in_order(
    local_store: Store, config: ImageQAConfig, dask_address: str
) -> None:
    keys = []
    for name in ORIGINALS[:2]:
        for label, (change, _) in sorted(DEGRADATIONS.items())[:2]:
            key = f"dicom/p/s/se/{label}-{name}"
            local_store.write_bytes(key, degraded(name, change))
            keys.append(key)
    small = config.model_copy(update={"group_size": 3})
    items = [QAItem(key, "instance") for key in keys]
    reports = assess_items(local_store, items, small, dask_address=dask_address)
    assert [r.key for r in reports] == keys
    assert all(r.needs_review for r in reports)
    assert assess_items(local_store, [], small, dask_address=dask_address) == []


@pytest.fixture(scope="module")
def dask_address() -> Any:
    """An in-process Dask cluster for the module (a process cluster is tested in test_quality)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster.scheduler_address

"""The quality stage end to end: configuration, GX + image QA on Dask, the review queue, Data Docs
that open offline, and the Prefect flow."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mira.errors import ConfigError, InvalidInput
from mira.settings import load_settings
from storage import Store, open_store
from tasks.dataset import catalog
from tasks.quality import review
from tasks.quality.config import load_quality_config
from tasks.quality.stage import (
    assess_batch,
    batch_verdicts,
    catalog_batches,
    identifiers_from_file,
    publish_data_docs,
    publish_gx_files,
    read_validation,
)
from tests.test_quality_data import (
    blurred,
    degraded,
    low_contrast,
    original_files,
    pen_marked,
    pyramid_tiff,
    tissue_image,
    write_dicom_batch,
    write_slide_batch,
)

pytest_plugins = ["tests.prefect_fixtures"]
PHI_NAME = "DOE^JANE"


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster.scheduler_address


def test_default_config_loads_with_documented_values() -> None:
    config = load_quality_config()
    assert config.image_qa.dicom.checks.blur.threshold == 0.5
    assert config.image_qa.slide.checks.tissue_fraction.threshold == 0.05
    assert config.suites["instances"]["unique-sop-instance-uid"].severity == "fail"
    assert config.suites["series"]["consistent-slice-spacing"].severity == "warn"
    assert set(config.suites) == {"instances", "series", "slides"}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_override_file_merges_onto_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    override = {
        "image_qa": {"dicom": {"checks": {"resolution": {"threshold": 256}}}},
        "suites": {"instances": {"duplicate-content": {"severity": "fail"}}},
    }
    path = tmp_path / f"site{suffix}"
    path.write_text(json.dumps(override))  # JSON is YAML too
    config = load_quality_config(path)
    assert config.image_qa.dicom.checks.resolution.threshold == 256
    assert config.image_qa.dicom.checks.contrast.threshold == 5.0  # untouched default
    assert config.suites["instances"]["duplicate-content"].severity == "fail"
    assert config.suites["instances"]["duplicate-content"].expectation == (
        "ExpectColumnValuesToBeUnique"
    )
    defaults = load_quality_config()
    monkeypatch.setenv("MIRA_QUALITY_CONFIG", str(path))
    from_settings = load_quality_config(load_settings().quality_config)
    assert from_settings.sha256() == config.sha256() != defaults.sha256()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image_qa: {dicom: {checks: {blur: {threshold: high}}}}", "invalid quality config"),
        ("image_qa: {dicom: {checks: {blurr: {threshold: 1}}}}", "invalid quality config"),
        ("suites: {instances: {x: {expectation: ExpectNothing}}}", "unknown Great Expectations"),
        ("- a list", "must hold a mapping"),
    ],
)
def test_bad_config_is_refused_with_a_clear_error(
    tmp_path: Path, local_store: Store, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    write_dicom_batch(local_store, "b", original_files()[:1])
    with pytest.raises(ConfigError, match=message):
        config = load_quality_config(path)
        assess_batch(local_store, "b", config=config, workers=1)


def test_identifier_file_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# known for batch 7\nSMITH^JOHN\n\n  MRN-0042 \n")
    assert identifiers_from_file(path) == ["SMITH^JOHN", "MRN-0042"]
    assert identifiers_from_file(None) == []
    with pytest.raises(ConfigError):
        identifiers_from_file(tmp_path / "missing.txt")


def mixed_batch(store: Store, batch: str) -> dict[str, str]:
    """Two clean images, a blurred and a low-contrast one, a clean and a pen-marked slide."""
    files = [
        *original_files(["CT_small.dcm", "MR_small.dcm"]),
        ("blurred-CT.dcm", degraded("CT_small.dcm", blurred)),
        ("flat-MR.dcm", degraded("MR_small.dcm", low_contrast)),
    ]
    keys = write_dicom_batch(store, batch, files)
    tissue = tissue_image(1024)
    slides = [("clean", pyramid_tiff(tissue, 3)), ("inked", pyramid_tiff(pen_marked(tissue), 3))]
    slide_keys = write_slide_batch(store, batch, slides)
    names = ("ct", "mr", "blurred", "flat", "slide", "inked")
    return dict(zip(names, [*keys, *slide_keys], strict=True))


def test_batch_end_to_end_on_a_process_cluster(local_store: Store) -> None:
    """The real ``dask_client`` path (a LocalCluster of processes) and every output."""
    keys = mixed_batch(local_store, "mixed")
    summary = assess_batch(local_store, "mixed", workers=1)
    assert summary.verdict == "pass"
    assert (summary.instances, summary.slides, summary.items_checked) == (4, 2, 6)
    queued = {keys["blurred"], keys["flat"], keys["inked"]}
    assert set(summary.queued_for_review) == queued
    assert catalog.excluded_keys(local_store) == queued

    rows = catalog.read_part(local_store, "quality", "mixed")
    assert rows is not None
    by_item = {(r["key"], r["check"]): r for r in rows.to_pylist() if r["key"]}
    blur = by_item[(keys["blurred"], "blur")]
    assert (blur["passed"], blur["severity"], blur["threshold"]) == (False, "fail", 0.5)
    assert blur["score"] < 0.5 < by_item[(keys["ct"], "blur")]["score"]
    assert not by_item[(keys["flat"], "contrast")]["passed"]
    assert not by_item[(keys["inked"], "pen_marks")]["passed"]
    assert by_item[(keys["slide"], "tissue_fraction")]["passed"]

    pending = {item.key: item for item in review.list_items(local_store)}
    assert set(pending) == queued
    for item in pending.values():
        assert local_store.read_bytes(item.thumbnail_key).startswith(b"\x89PNG")
    assert "pen_marks" in pending[keys["inked"]].reasons

    document = read_validation(local_store, "mixed")
    assert document["verdict"] == "pass"
    assert document["image_qa"]["failed_by_check"] == {"blur": 1, "contrast": 1, "pen_marks": 1}
    assert sorted(document["image_qa"]["queued_for_review"]) == sorted(queued)


def test_rerun_is_idempotent_and_keeps_decisions(local_store: Store, dask_address: str) -> None:
    keys = mixed_batch(local_store, "again")
    first = assess_batch(local_store, "again", dask_address=dask_address)
    review.decide(local_store, keys["blurred"], "accepted", "ada", "diagnostic anyway")
    before = catalog.read_part(local_store, "quality", "again")
    second = assess_batch(local_store, "again", dask_address=dask_address)
    assert catalog.read_part(local_store, "quality", "again") == before
    assert second.queued_for_review == first.queued_for_review
    assert catalog.excluded_keys(local_store) == {keys["flat"], keys["inked"]}
    assert [p.key for p in catalog.list_parts(local_store, "quality")] == [
        "catalog/quality/again.parquet"
    ]
    assert catalog_batches(local_store) == ["again"]
    assert batch_verdicts(local_store) == {"again": "pass"}


def test_unknown_batch_is_refused(local_store: Store) -> None:
    with pytest.raises(InvalidInput, match="no instances or slides"):
        assess_batch(local_store, "nothing-here", workers=1)


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def test_data_docs_open_offline_and_hold_no_phi(local_store: Store, dask_address: str) -> None:
    write_dicom_batch(local_store, "clean", original_files())
    write_dicom_batch(local_store, "leaky", original_files(), {0: {"model": PHI_NAME}})
    for batch in ("clean", "leaky"):
        assess_batch(local_store, batch, dask_address=dask_address)
    site = publish_data_docs(local_store)
    assert site.local_path == str(Path(local_store.url) / "quality/data_docs/index.html")
    pages = [o.key for o in local_store.list("quality/data_docs/") if o.key.endswith(".html")]
    assert len(pages) == site.pages >= 6  # index, 2 suites, 2 x (instances, series) results
    for key in pages:
        text = local_store.read_bytes(key).decode()
        assert not EXTERNAL.search(text), (key, EXTERNAL.search(text))
        assert "cdn" not in text.lower() and "<script" not in text.lower()
    index = local_store.read_bytes(site.index_key).decode()
    assert "leaky" in index and "clean" in index and "fail" in index
    # The offending value was found (the batch fails) but is in no stored result or page.
    assert batch_verdicts(local_store) == {"clean": "pass", "leaky": "fail"}
    for obj in [*local_store.list("quality/"), *local_store.list("catalog/quality/")]:
        assert PHI_NAME.encode() not in local_store.read_bytes(obj.key), obj.key
    # Every linked page exists (relative links resolve inside the site).
    for link in re.findall(r"href='([^']+\.html)'", index):
        assert local_store.exists(f"quality/data_docs/{link}"), link


def test_gx_makes_no_network_call(
    local_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation and the Data Docs build try no host beyond loopback (no analytics, no CDN)."""
    import socket

    from tasks.quality.expectations import batch_frames, run_suites

    attempts: list[Any] = []
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def local(host: Any) -> bool:
        return str(host) in ("127.0.0.1", "::1", "localhost") or str(host).startswith("/")

    def connect(sock: socket.socket, address: Any) -> Any:
        if not local(address[0] if isinstance(address, tuple) else address):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(sock, address)

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not local(host):
            attempts.append(host)
            raise OSError("network disabled in this test")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    write_dicom_batch(local_store, "offline", original_files())
    frames = batch_frames(local_store, "offline")
    run = run_suites(frames, load_quality_config().suites, "offline", tmp_path / "gx")
    assert run.outcomes and all(o.passed for o in run.outcomes)
    publish_gx_files(local_store, "offline", run.gx_files)
    rows = [o.quality_row("offline") for o in run.outcomes]
    catalog.write_part(local_store, "quality", "offline", rows)
    assert publish_data_docs(local_store).pages >= 4
    assert attempts == []


@pytest.mark.s3
def test_quality_stage_on_s3(s3_store: Store, dask_address: str, s3_server: Any) -> None:
    keys = write_dicom_batch(
        s3_store,
        "s3b",
        [*original_files(["CT_small.dcm"]), ("b.dcm", degraded("MR_small.dcm", blurred))],
    )
    write_slide_batch(s3_store, "s3b", [("clean", pyramid_tiff(tissue_image(1024), 3))])
    summary = assess_batch(s3_store, "s3b", dask_address=dask_address)
    assert summary.queued_for_review == (keys[1],)
    site = publish_data_docs(s3_store)
    assert site.local_path is None and site.index_url.startswith("s3://")
    assert s3_store.exists(site.index_key)
    assert open_store(s3_store.url, s3_server.config).exists(
        review.list_items(s3_store)[0].thumbnail_key
    )


@pytest.mark.prefect
def test_quality_flow_validates_one_or_every_batch(tmp_path: Path, prefect_api: str) -> None:
    from flows.params import StoreParams
    from flows.quality import QualityOptions, quality

    research = open_store(tmp_path / "research")
    write_dicom_batch(research, "f1", original_files())
    write_dicom_batch(research, "f2", original_files(), {0: {"modality": "XX"}})
    stores = StoreParams(research_url=research.url)
    one = quality("f1", stores, QualityOptions(build_docs=False))
    assert one.verdict == "pass" and one.data_docs is None
    every = quality(None, stores)
    assert every.verdicts == {"f1": "pass", "f2": "fail"}
    assert every.verdict == "fail" and every.queued_for_review == 0
    assert every.data_docs is not None and every.data_docs.endswith("quality/data_docs/index.html")


def test_reuse_current_rewrites_nothing_until_the_inputs_change(
    local_store: Store, dask_address: str
) -> None:
    mixed_batch(local_store, "steady")
    first = assess_batch(local_store, "steady", dask_address=dask_address)
    before = [(o.key, o.etag) for o in local_store.list("quality")]
    kept = assess_batch(local_store, "steady", dask_address=dask_address, reuse_current=True)
    assert kept.reused and kept.verdict == first.verdict
    assert kept.queued_for_review == first.queued_for_review
    assert [(o.key, o.etag) for o in local_store.list("quality")] == before
    rows = catalog.read_part(local_store, "instances", "steady")
    assert rows is not None
    catalog.write_part(local_store, "instances", "steady", rows.slice(0, 2))  # the batch changed
    again = assess_batch(local_store, "steady", dask_address=dask_address, reuse_current=True)
    assert not again.reused and again.instances == 2

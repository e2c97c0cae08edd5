"""DICOM whole-slide images: a VL Whole Slide Microscopy series read, checked and converted.

The real case is the CMU Aperio slide made into DICOM by wsidicomizer (``make fixtures``): its
frames are the SVS tiles' JPEG streams, so mira's pyramid of it must equal mira's pyramid of the
SVS pixel for pixel. The generated cases (pydicom, ``tests/slides.py``) cover what that one file
does not: TILED_SPARSE, JPEG 2000, JPEG-LS, uncompressed and YBR JPEG frames, a concatenated level
0, and series that are not complete slides.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import tifffile
import zarr
from typer.testing import CliRunner
from wsidicom import WsiDicom

from mira.cli.root import app, register_commands
from mira.errors import InvalidInput
from storage import Store, open_store
from tasks.dataset import catalog
from tasks.deid import DeidPolicy, deidentify_batch, deidentify_folder
from tasks.ingest import (
    WSI_SOP_CLASS,
    WsiInstance,
    check_wsi_series,
    ingest_batch,
    read_accepted,
    read_wsi_instance,
)
from tasks.sample import generate_sample_data
from tasks.wsi import (
    ConvertOptions,
    catalog_pyramids,
    convert_pending_slides,
    convert_slide,
    write_dicom_slide,
)
from tests.slides import dicom_wsi_pixels, write_dicom_wsi, write_slide

pytest_plugins = ["tests.prefect_fixtures"]

FIXTURES = Path(__file__).parent / "fixtures"
REAL_SVS = FIXTURES / "cmu_small_region.svs"
REAL_DICOM = FIXTURES / "cmu_small_region_dicom"
HEIGHT, WIDTH, TILE = 300, 420, 128
OPTIONS = ConvertOptions(chunk=128, shard=256, min_level_side=128, workers=2)


def _real_fixtures() -> None:
    if not REAL_SVS.exists() or not any(REAL_DICOM.glob("*.dcm")):
        pytest.skip("tests/fixtures/cmu_small_region_dicom is missing: run `make fixtures`")


class Pyramid:
    """A converted pyramid's levels (``(c, y, x)`` arrays) and root attributes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.attrs: dict[str, Any] = json.loads((path / "zarr.json").read_text())["attributes"]

    def __getitem__(self, level: str) -> np.ndarray:
        return np.asarray(zarr.open_array(str(self.path / level), mode="r")[:])


def _convert(folder: Path, key: str, out: Path, options: ConvertOptions = OPTIONS) -> Pyramid:
    result = convert_slide(open_store(folder), key, open_store(out), "p.ome.zarr", options)
    assert not result.skipped
    return Pyramid(out / "p.ome.zarr")


def _level0(pyramid: Pyramid) -> np.ndarray:
    return np.moveaxis(pyramid["0"], 0, -1)


def test_real_dicom_wsi_pyramid_equals_the_svs_pyramid(tmp_path: Path) -> None:
    _real_fixtures()
    options = ConvertOptions(chunk=256, shard=1024, workers=2)
    from_dicom = _convert(FIXTURES, REAL_DICOM.name, tmp_path / "dicom", options)
    from_svs = _convert(FIXTURES, REAL_SVS.name, tmp_path / "svs", options)
    assert from_dicom["0"].shape == from_svs["0"].shape == (3, 2967, 2220)
    for level in ("0", "1", "2"):
        assert np.array_equal(from_dicom[level], from_svs[level]), level
    mira = from_dicom.attrs["mira"]
    assert mira["slide"]["format"] == "dicom-wsi"
    assert mira["slide"]["mpp_x"] == pytest.approx(0.499)  # PixelSpacing 0.000499 mm
    scale = from_dicom.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale[0]["scale"][1:] == pytest.approx([0.499, 0.499])


def test_real_dicom_wsi_passthrough_keeps_the_frames_as_scanned(tmp_path: Path) -> None:
    _real_fixtures()
    options = ConvertOptions(codec="jpeg", shard=960, workers=2)
    group = _convert(FIXTURES, REAL_DICOM.name, tmp_path / "jpeg", options)
    lossless = _convert(FIXTURES, REAL_SVS.name, tmp_path / "svs", ConvertOptions(workers=2))
    assert np.array_equal(group["0"], lossless["0"])
    volume = next(
        path
        for path in REAL_DICOM.glob("*.dcm")
        if "VOLUME" in pydicom.dcmread(path, stop_before_pixels=True).ImageType
    )
    with volume.open("rb") as stream:
        _, spans = read_wsi_instance(stream)
    data = volume.read_bytes()
    first_frame = b"".join(data[offset : offset + size] for offset, size in spans[0])
    # the shard's first chunk is tile (0, 0): its stored bytes are the frame, unchanged
    shard = (tmp_path / "jpeg" / "p.ome.zarr" / "0" / "c" / "0" / "0" / "0").read_bytes()
    assert first_frame in shard


@pytest.mark.parametrize("codec", ["jpeg2000", "jpegls", "none"])
def test_lossless_frames_convert_to_the_written_pixels(tmp_path: Path, codec: str) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, codec=codec, tile=TILE)  # type: ignore[arg-type]
    group = _convert(tmp_path, "s", tmp_path / "out")
    assert np.array_equal(_level0(group), dicom_wsi_pixels(HEIGHT, WIDTH, TILE))
    assert group.attrs["mira"]["slide"]["mpp_x"] == pytest.approx(0.25)


@pytest.mark.parametrize("codec", ["jpeg", "jpeg-ybr"])
def test_jpeg_frames_decode_as_wsidicom_reads_them(tmp_path: Path, codec: str) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, codec=codec, tile=TILE)  # type: ignore[arg-type]
    group = _convert(tmp_path, "s", tmp_path / "out")
    with WsiDicom.open(tmp_path / "s") as wsi:
        theirs = np.asarray(wsi.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))
    mine = _level0(group)
    assert mine.shape == theirs.shape
    # libjpeg-turbo both times; wsidicom may take another IDCT or upsampling path
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 2
    truth = dicom_wsi_pixels(HEIGHT, WIDTH, TILE)
    # lossy (chroma subsampled for YBR), but a wrong colour space would be off by tens
    assert np.abs(mine.astype(int) - truth.astype(int)).mean() < 8


def test_tiled_sparse_places_each_frame_and_leaves_absent_tiles_zero(tmp_path: Path) -> None:
    write_dicom_wsi(
        tmp_path / "s", HEIGHT, WIDTH, codec="none", tile=TILE, sparse=True, skip_tiles=(1, 5)
    )
    group = _convert(tmp_path, "s", tmp_path / "out")
    expected = dicom_wsi_pixels(HEIGHT, WIDTH, TILE)
    across = -(-WIDTH // TILE)
    for tile in (1, 5):
        top, left = (tile // across) * TILE, (tile % across) * TILE
        expected[top : top + TILE, left : left + TILE] = 0
    assert np.array_equal(_level0(group), expected)


def test_a_concatenated_level_reads_as_one(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, codec="jpegls", tile=TILE, parts=3)
    group = _convert(tmp_path, "s", tmp_path / "out")
    assert np.array_equal(_level0(group), dicom_wsi_pixels(HEIGHT, WIDTH, TILE))


def test_a_rerun_with_the_same_series_is_skipped(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, codec="jpeg2000", tile=TILE)
    _convert(tmp_path, "s", tmp_path / "out")
    again = convert_slide(
        open_store(tmp_path), "s", open_store(tmp_path / "out"), "p.ome.zarr", OPTIONS
    )
    assert again.skipped


def _records(folder: Path) -> list[WsiInstance]:
    records = []
    for path in sorted(folder.glob("*.dcm")):
        with path.open("rb") as stream:
            records.append(read_wsi_instance(stream)[0])
    return records


def test_a_complete_series_is_one_slide_with_its_levels(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, levels=3, parts=2)
    series = check_wsi_series(_records(tmp_path / "s"))
    assert [level.first.total_columns for level in series.levels] == [420, 210, 105]
    assert len(series.levels[0].instances) == 2
    assert sorted(other.flavour for other in series.others) == ["LABEL", "OVERVIEW"]


def test_a_missing_frame_is_an_incomplete_slide(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, skip_tiles=(4,))
    with pytest.raises(InvalidInput, match="has 11 frames where its 4x3 tiles need 12") as err:
        check_wsi_series(_records(tmp_path / "s"))
    assert err.value.rejection.reason == "incomplete-slide"  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="11 frames where"):
        convert_slide(open_store(tmp_path), "s", open_store(tmp_path / "o"), "p.ome.zarr", OPTIONS)


def test_a_missing_concatenation_part_is_an_incomplete_slide(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, parts=3)
    (tmp_path / "s" / "level0-1.dcm").unlink()
    with pytest.raises(InvalidInput, match="concatenation parts 1, 3 of 3"):
        check_wsi_series(_records(tmp_path / "s"))


def test_a_series_without_a_volume_level_is_not_a_slide(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE)
    for path in (tmp_path / "s").glob("level*.dcm"):
        path.unlink()
    with pytest.raises(InvalidInput, match="no VOLUME"):
        check_wsi_series(_records(tmp_path / "s"))


def test_a_truncated_frame_is_refused(tmp_path: Path) -> None:
    (path, *_) = write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, associated=())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    with pytest.raises(InvalidInput) as err, path.open("rb") as stream:
        read_wsi_instance(stream)
    assert err.value.rejection.reason == "truncated"  # type: ignore[attr-defined]


def _drop(store: Store, batch: str, folder: Path) -> None:
    for path in sorted(folder.glob("*.dcm")):
        store.write_bytes(f"dropzone/{batch}/slide/{path.name}", path.read_bytes())
    store.write_bytes(f"dropzone/{batch}/_READY", b"")


def test_ingest_accepts_a_complete_series_as_one_slide(local_store: Store, tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, codec="jpeg2000", parts=2)
    _drop(local_store, "wsi1", tmp_path / "s")
    result = ingest_batch(local_store, "wsi1")
    assert (result.accepted, dict(result.quarantined)) == (5, {})  # 2 parts, level 1, 2 others
    rows = read_accepted(local_store, "wsi1").to_pylist()
    assert {row["sop_class_uid"] for row in rows} == {WSI_SOP_CLASS}
    assert len({row["series_uid"] for row in rows}) == 1


def test_ingest_quarantines_every_instance_of_an_incomplete_slide(
    local_store: Store, tmp_path: Path
) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, skip_tiles=(4,))
    write_dicom_wsi(tmp_path / "ok", HEIGHT, WIDTH, tile=TILE, associated=())
    _drop(local_store, "wsi2", tmp_path / "s")
    for path in sorted((tmp_path / "ok").glob("*.dcm")):
        local_store.write_bytes(f"dropzone/wsi2/ok/{path.name}", path.read_bytes())
    result = ingest_batch(local_store, "wsi2")
    assert (result.accepted, dict(result.quarantined)) == (2, {"incomplete-slide": 4})
    reason = local_store.read_json("quarantine/wsi2/slide/label.dcm.reason.json")
    assert reason["reason"] == "incomplete-slide"
    assert "has 11 frames where its 4x3 tiles need 12" in reason["detail"]
    assert local_store.exists("quarantine/wsi2/slide/level0-0.dcm")


def test_ingest_holds_back_the_slide_of_a_truncated_instance(
    local_store: Store, tmp_path: Path
) -> None:
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, associated=())
    level0 = tmp_path / "s" / "level0-0.dcm"
    level0.write_bytes(level0.read_bytes()[:-5000])
    _drop(local_store, "wsi3", tmp_path / "s")
    result = ingest_batch(local_store, "wsi3")
    assert result.accepted == 0
    assert sum(result.quarantined.values()) == 2
    assert result.quarantined.get("incomplete-slide") == 1
    other = local_store.read_json("quarantine/wsi3/slide/level1-0.dcm.reason.json")
    assert "level0" not in other["detail"] and "was refused (truncated" in other["detail"]


def _pixel_data(path: Path) -> bytes:
    return bytes(pydicom.dcmread(path).PixelData)


def test_deid_keeps_the_slide_whole_and_drops_labels_and_a_thumbnail_with_text(
    tmp_path: Path,
) -> None:
    texts = ("LABEL", "OVERVIEW", "THUMBNAIL")
    a = write_dicom_wsi(
        tmp_path / "in" / "a", HEIGHT, WIDTH, tile=TILE, parts=2, associated=texts,
        thumbnail_text="DOE JOHN S24-1984",
    )  # fmt: skip
    b = write_dicom_wsi(
        tmp_path / "in" / "b", HEIGHT, WIDTH, tile=TILE, codec="jpegls", seed=1,
        associated=("THUMBNAIL",),
    )  # fmt: skip
    result = deidentify_folder(
        open_store(tmp_path / "in"),
        open_store(tmp_path / "out"),
        open_store(tmp_path / "held"),
        b"k" * 32,
        DeidPolicy.default(),
    )
    assert result.quarantined == {"slide-label-image": 2, "slide-thumbnail-text": 1}
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    kept = {_pixel_data(path) for path in [*a[:3], *b]}
    assert len(outputs) == 6 and {_pixel_data(path) for path in outputs} == kept  # frames as-is
    for path in outputs:
        data = path.read_bytes()
        assert not any(phi.encode() in data for phi in ("DOE^JOHN", "MRN-4455-DICOM", "S24-1984"))
    folders = {path.parent for path in outputs}
    assert len(folders) == 2  # one series per slide, every instance in it
    for folder in folders:
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in folder.glob("*")]
        uids = {(h.StudyInstanceUID, h.SeriesInstanceUID, h.FrameOfReferenceUID) for h in headers}
        assert len(uids) == 1
        assert {h.SeriesInstanceUID for h in headers}.isdisjoint(
            pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID for path in a + b
        )
    slide_a = next(f for f in folders if len(list(f.glob("*"))) == 3 and _has_parts(f))
    out = open_store(tmp_path / "out")
    key = str(slide_a.relative_to(tmp_path / "out"))
    convert_slide(out, key, open_store(tmp_path / "pa"), "p.ome.zarr", OPTIONS)
    _convert(tmp_path / "in", "a", tmp_path / "pin")
    assert np.array_equal(
        Pyramid(tmp_path / "pa" / "p.ome.zarr")["0"], Pyramid(tmp_path / "pin" / "p.ome.zarr")["0"]
    )


def _has_parts(folder: Path) -> bool:
    return any(
        "ConcatenationUID" in pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*")
    )


def test_a_dropped_series_is_ingested_deidentified_and_converted_as_one_slide(
    tmp_path: Path,
) -> None:
    gateway, research = open_store(tmp_path / "gw"), open_store(tmp_path / "research")
    write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, codec="jpeg2000", parts=2)
    _drop(gateway, "wsi4", tmp_path / "s")
    assert ingest_batch(gateway, "wsi4").accepted == 5
    deid = deidentify_batch(gateway, research, "wsi4", b"k" * 32, DeidPolicy.default())
    assert (deid.instances, deid.quarantined) == (3, {"slide-label-image": 2})
    results = convert_pending_slides(research, OPTIONS)
    assert len(results) == 1 and not results[0].skipped
    (series,) = {path.parent for path in (tmp_path / "research" / "dicom").rglob("*.dcm")}
    assert results[0].pyramid_key == f"pyramids/{series.name}.ome.zarr"
    pyramid = Pyramid(tmp_path / "research" / results[0].pyramid_key)
    assert np.array_equal(_level0(pyramid), dicom_wsi_pixels(HEIGHT, WIDTH, TILE))
    catalog_pyramids(research, results)
    assert [r.skipped for r in convert_pending_slides(research, OPTIONS)] == [True]


def test_sample_data_emits_a_dicom_slide_that_goes_through_as_one(tmp_path: Path) -> None:
    gateway, research = open_store(tmp_path / "gw"), open_store(tmp_path / "research")
    summary = generate_sample_data(
        tmp_path / "gw" / "dropzone", patients=1, slides=0, slide_size=1024, dicom_slides=1
    )
    batch = next(name for name in summary.batches if "pathology" in name)
    manifest = json.loads((tmp_path / "gw" / "dropzone" / batch / "manifest.json").read_text())
    dicom = [entry for entry in manifest["files"] if entry["path"].endswith(".dcm")]
    assert len(dicom) == 6 and not any("patient_id" in entry for entry in dicom)
    ingested = ingest_batch(gateway, batch)
    assert (ingested.accepted, dict(ingested.quarantined)) == (6, {})
    deid = deidentify_batch(gateway, research, batch, b"k" * 32, DeidPolicy.default())
    assert deid.quarantined == {"slide-label-image": 2}  # the tissue thumbnail has no text
    assert deid.instances == 4
    (result,) = convert_pending_slides(research, OPTIONS)
    assert result.shape == (1024, 1024) and result.mpp == pytest.approx(0.25)
    truth = json.loads(summary.phi_truth.read_text())["patients"][0]
    scanner = truth["slides"][0]
    names = [
        *truth["identifiers"]["names"],
        *truth["identifiers"]["ids"],
        scanner["case_number"],
        scanner["scanscope_id"],
    ]
    for path in (tmp_path / "gw" / "dropzone" / batch).rglob("*.dcm"):  # the scanner's UIDs
        header = pydicom.dcmread(path, stop_before_pixels=True)
        names += [header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID]
    for path in (tmp_path / "research").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(name.encode() in data for name in names if len(name) > 3), path


def test_an_interrupted_conversion_resumes_to_the_same_pyramid(tmp_path: Path) -> None:
    write_dicom_wsi(tmp_path / "s", 600, 700, tile=TILE, codec="jpegls")
    first = _convert(tmp_path, "s", tmp_path / "out")
    level0, level1 = first["0"], first["1"]
    shards = sorted((first.path / "0").rglob("c/*/*/*"))
    assert len(shards) > 1
    kept = shards[0].read_bytes()
    # a killed run: the root (the completion record) unpublished, a level-0 shard and the
    # levels above it (written after their children) not yet written
    (first.path / "zarr.json").unlink()
    shards[-1].unlink()
    for level in first.path.iterdir():
        if level.is_dir() and level.name != "0":
            for shard in level.rglob("c/*/*/*"):
                shard.unlink()
    again = convert_slide(
        open_store(tmp_path), "s", open_store(tmp_path / "out"), "p.ome.zarr", OPTIONS
    )
    assert not again.skipped
    assert shards[0].read_bytes() == kept and shards[-1].exists()
    assert np.array_equal(Pyramid(first.path)["0"], level0)
    assert np.array_equal(Pyramid(first.path)["1"], level1)
    assert np.array_equal(_level0(Pyramid(first.path)), dicom_wsi_pixels(600, 700, TILE))


@pytest.mark.s3
def test_a_series_on_s3_converts_by_range_reads(s3_store: Store, tmp_path: Path) -> None:
    paths = write_dicom_wsi(tmp_path / "s", HEIGHT, WIDTH, tile=TILE, codec="jpeg2000", parts=2)
    for path in paths:
        s3_store.write_bytes(f"series/{path.name}", path.read_bytes())
    result = convert_slide(s3_store, "series", s3_store, "p.ome.zarr", OPTIONS)
    assert not result.skipped and result.levels == 3
    local = _convert(tmp_path, "s", tmp_path / "out")
    pyramid = zarr.open_array(s3_store.zarr_store("p.ome.zarr/0", read_only=True), mode="r")
    assert np.array_equal(np.asarray(pyramid[:]), local["0"])
    again = convert_slide(s3_store, "series", s3_store, "p.ome.zarr", OPTIONS)
    assert again.skipped and again.source_sha256 == result.source_sha256


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("source", ["real", "generated-svs", "generated-ycbcr"])
def test_dicom_out_is_valid_and_reads_back_as_the_slide(tmp_path: Path, source: str) -> None:
    if source == "real":
        _real_fixtures()
        slide = REAL_SVS
    else:
        slide = tmp_path / "slide.tiff"
        kind = "svs" if source == "generated-svs" else "tiff"
        write_slide(slide, 1000, 1300, kind=kind, codec="jpeg", tile=256)  # type: ignore[arg-type]
    result = write_dicom_slide(
        open_store(slide.parent), slide.name, open_store(tmp_path / "dcm"), "", patient_id="P1"
    )
    instances = [tmp_path / "dcm" / key for key in result.keys]
    assert len(instances) == (1 if source == "real" else 3)
    for path in instances:
        assert _dciodvfy_errors(path) == [], path
    truth = tifffile.TiffFile(slide).series[0].levels[0].asarray()
    with WsiDicom.open(tmp_path / "dcm") as wsi:
        assert len(wsi.levels) == len(instances)
        height, width = truth.shape[:2]
        theirs = np.asarray(wsi.read_region((0, 0), 0, (width, height)).convert("RGB"))
    assert np.array_equal(theirs, truth)  # the tiles as scanned, decoded as the TIFF's
    options = ConvertOptions(workers=2)
    from_dicom = _convert(tmp_path, "dcm", tmp_path / "a", options)
    from_tiff = _convert(slide.parent, slide.name, tmp_path / "b", options)
    assert np.array_equal(from_dicom["0"], from_tiff["0"])
    assert pydicom.dcmread(instances[0], stop_before_pixels=True).PatientID == "P1"
    again = write_dicom_slide(open_store(slide.parent), slide.name, open_store(tmp_path / "d2"), "")
    assert again.series_uid == result.series_uid  # named by the slide's content


@pytest.mark.prefect
@pytest.mark.slow
def test_mira_run_takes_the_sample_dicom_slide_through_every_stage(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``make demo`` does with its DICOM slide: ``mira run`` ingests the series as one
    slide, de-identifies it (labels dropped), converts it and snapshots the batch."""
    register_commands()
    gateway, research = tmp_path / "gateway", tmp_path / "research"
    generate_sample_data(
        gateway / "dropzone", patients=1, slides=0, slide_size=1024, dicom_slides=1
    )
    monkeypatch.setenv("MIRA_DEID_SECRET", "dicom-wsi-pipeline-test-secret-0123456789")
    for name in ("MIRA_GATEWAY_URL", "MIRA_RESEARCH_URL"):
        monkeypatch.delenv(name, raising=False)
    flags = ["--gateway", str(gateway), "--research", str(research)]
    result = CliRunner().invoke(app, [*flags, "run", "batch-0002-pathology"])
    assert result.exit_code == 0, result.output
    store = open_store(research)
    (pyramid,) = [o.key for o in store.list("pyramids") if o.key.endswith(".ome.zarr/zarr.json")]
    record = store.read_json(pyramid)["attributes"]["mira"]
    assert record["slide"]["format"] == "dicom-wsi" and record["source_key"].startswith("dicom/")
    rows = catalog.read_table(store, "pyramids").to_pylist()
    assert [row["slide_key"] for row in rows] == [record["source_key"]]
    assert store.exists("snapshots/after-batch-0002-pathology/manifest.parquet")


def test_an_instance_that_does_not_name_its_organization_is_read_by_its_frames(
    tmp_path: Path,
) -> None:
    for sparse in (False, True):
        folder = tmp_path / ("sparse" if sparse else "full")
        write_dicom_wsi(folder, HEIGHT, WIDTH, tile=TILE, codec="none", sparse=sparse)
        for path in folder.glob("*.dcm"):  # as early scanners wrote them
            dataset = pydicom.dcmread(path)
            del dataset.DimensionOrganizationType
            dataset.save_as(path)
        assert {record.organization for record in _records(folder)} == (
            {"TILED_SPARSE", "TILED_FULL"} if sparse else {"TILED_FULL"}
        )
        pyramid = _convert(tmp_path, folder.name, tmp_path / f"out-{folder.name}")
        assert np.array_equal(_level0(pyramid), dicom_wsi_pixels(HEIGHT, WIDTH, TILE))

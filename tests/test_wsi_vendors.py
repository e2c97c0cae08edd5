"""The vendors' TIFF layouts (Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips TIFF, Akoya QPTIFF),
generated with each vendor's tag and description structure (tests/vendor_slides.py): recognised
at ingest, de-identified in place (label, macro, overview and thumbnail gone, vendor metadata
rebuilt, no planted identifier left) and converted to OME-Zarr losslessly at the right scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import tifffile
from ome_zarr_models.v05.image import Image as ImageV05
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from mira.errors import InvalidInput
from storage import open_store
from tasks.dataset import catalog
from tasks.deid import DeidPolicy, deidentify_slide, scan_for_phi
from tasks.ingest.sniff import inspect_object
from tasks.sample import generate_sample_data
from tasks.sample import ndpi as ndpi_writer
from tasks.slide_vendors import associated_pages, main_series, slide_vendor, vendor_optics
from tasks.wsi.convert import ConvertOptions, convert_slide
from tests.test_wsi import all_text, attributes, open_pyramid, pixels
from tests.vendor_slides import (
    HEIGHT,
    MPP,
    OBJECTIVES,
    PLANTED,
    VENDOR_WRITERS,
    WIDTH,
    write_mrxs_slide,
    write_multiplexed_qptiff,
    write_scn_slide,
    write_vendor_slide,
)

KEY = bytes(range(32))
VENDORS = sorted(VENDOR_WRITERS)
REMOVED = {
    "hamamatsu": {"macro"},
    "leica": {"macro"},
    "ventana": {"label", "thumbnail"},
    "philips": {"label", "macro"},
    "akoya": {"thumbnail", "macro", "label"},
}
FORMATS = {
    "hamamatsu": "ndpi",
    "leica": "scn",
    "ventana": "bif",
    "philips": "philips-tiff",
    "akoya": "qptiff",
}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
pytest_plugins = ["tests.prefect_fixtures"]


def level0(path: Path) -> np.ndarray:
    """The main image's full resolution as tifffile decodes it, (y, x, c)."""
    with tifffile.TiffFile(path) as tif:
        image = main_series(tif).levels[0].asarray()
    return image.reshape(image.shape[-3:])


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vendor-slides")
    return {vendor: write_vendor_slide(vendor, folder) for vendor in VENDORS}


@pytest.mark.parametrize("vendor", VENDORS)
def test_generated_layout_is_flagged_as_the_vendor_by_tifffile(
    originals: dict[str, Path], vendor: str
) -> None:
    with tifffile.TiffFile(originals[vendor]) as tif:
        assert slide_vendor(tif) == vendor
        assert set(associated_pages(tif).values()) == REMOVED[vendor]


@pytest.mark.parametrize(
    ("vendor", "associated"),
    [
        ("hamamatsu", {"macro"}),
        ("philips", {"label", "macro"}),
        ("ventana", {"macro", "thumbnail"}),  # OpenSlide calls a BIF's Label_Image "macro"
    ],
)
def test_openslide_reads_the_generated_layout_as_the_vendor(
    originals: dict[str, Path], vendor: str, associated: set[str]
) -> None:
    """A second, independent reader agrees: same vendor, associated images and pixels (for
    the BIF: the tile joints of its EncodeInfo, numbered from the bottom, stitch edge to edge)."""
    slide = openslide.OpenSlide(str(originals[vendor]))
    assert slide.properties["openslide.vendor"] == vendor
    assert slide.dimensions == (WIDTH, HEIGHT)
    if vendor == "philips":  # OpenSlide leaves a Philips spacing (mm) as a vendor property
        key = "philips.PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE[0].DICOM_PIXEL_SPACING"
        assert float(slide.properties[key].split()[0].strip('"')) * 1000 == pytest.approx(MPP)
    else:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
    assert set(slide.associated_images) == associated
    region = np.asarray(slide.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))
    assert np.array_equal(region, level0(originals[vendor]))


def test_openslide_reads_the_generated_scn_as_leica(originals: dict[str, Path]) -> None:
    slide = openslide.OpenSlide(str(originals["leica"]))
    assert slide.properties["openslide.vendor"] == "leica"
    assert slide.properties["openslide.objective-power"] == "20"


@pytest.mark.parametrize("vendor", VENDORS)
def test_ingest_recognises_the_vendor_and_its_pixel_size(
    originals: dict[str, Path], vendor: str
) -> None:
    with originals[vendor].open("rb") as stream:
        inspection = inspect_object(stream)
    assert inspection.rejection is None
    assert inspection.slide is not None
    assert inspection.slide.vendor == vendor
    assert (inspection.slide.width, inspection.slide.height) == (WIDTH, HEIGHT)
    assert inspection.slide.levels == 2
    assert inspection.slide.mpp == pytest.approx(MPP, rel=1e-4)


@pytest.mark.parametrize("vendor", VENDORS)
def test_deid_drops_associated_images_and_scrubs_vendor_metadata(
    originals: dict[str, Path], vendor: str, tmp_path: Path
) -> None:
    out = tmp_path / "slide.tiff"
    result = deidentify_slide(originals[vendor], out, KEY, DeidPolicy.default())
    assert result.vendor == vendor
    assert set(result.removed_images) == REMOVED[vendor]
    assert result.levels == 2
    assert result.mpp == pytest.approx(MPP, rel=1e-4)
    assert result.magnification == OBJECTIVES[vendor]
    data = out.read_bytes()
    left = [token for token in PLANTED if token.encode() in data]
    assert left == [], f"planted identifiers left in the output: {left}"
    assert scan_for_phi([("slides/x.tiff", data)], result.identifiers) == []
    with tifffile.TiffFile(out) as tif:
        assert slide_vendor(tif) == vendor, "the output still reads as the vendor's layout"
        assert associated_pages(tif) == {}
        assert len(tif.pages) == 2
    assert np.array_equal(level0(out), level0(originals[vendor])), "levels copied, not re-encoded"


def test_deid_ndpi_drops_text_hidden_in_the_jpeg_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG comment and an APP segment carrying the label text inside each level's strip are
    removed, the McuStarts moved back by as many bytes, the pixels unchanged."""
    original = ndpi_writer.restart_jpeg
    text = b"S24-01234 DOE^JOHN"
    hidden = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    hidden += b"\xff\xe3" + (len(text) + 2).to_bytes(2, "big") + text

    def with_hidden_text(rgb: np.ndarray, quality: int, restarts: bool = True) -> Any:
        data, starts = original(rgb, quality, restarts)
        return data[:2] + hidden + data[2:], [start + len(hidden) for start in starts]

    monkeypatch.setattr(ndpi_writer, "restart_jpeg", with_hidden_text)
    path = write_vendor_slide("hamamatsu", tmp_path)
    assert path.read_bytes().count(text) > 2
    out = tmp_path / "slide.tiff"
    deidentify_slide(path, out, KEY, DeidPolicy.default())
    assert b"DOE" not in out.read_bytes()
    assert np.array_equal(level0(out), level0(path))
    with tifffile.TiffFile(out) as tif:
        starts = tif.pages.first.tags.valueof(65426)
    with tifffile.TiffFile(path) as tif:
        assert list(starts) == [s - len(hidden) for s in tif.pages.first.tags.valueof(65426)]


def test_deid_ndpi_keeps_each_level_one_restart_marker_strip(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "slide.tiff"
    deidentify_slide(originals["hamamatsu"], out, KEY, DeidPolicy.default())
    with tifffile.TiffFile(originals["hamamatsu"]) as before, tifffile.TiffFile(out) as after:
        for old, new in zip(before.pages[:2], after.pages, strict=True):
            assert isinstance(old, tifffile.TiffPage) and isinstance(new, tifffile.TiffPage)
            assert np.array_equal(old.tags.valueof(65426), new.tags.valueof(65426))
            old_strip, new_strip = old.tags.valueof(273), new.tags.valueof(273)
            before.filehandle.seek(old_strip[0])
            after.filehandle.seek(new_strip[0])
            size = old.tags.valueof(279)[0]
            assert before.filehandle.read(size) == after.filehandle.read(size)
            for code in (65427, 65442, 65449, 306):
                assert code not in new.tags


@pytest.mark.parametrize("vendor", VENDORS)
def test_converts_losslessly_at_the_vendors_pixel_size(
    originals: dict[str, Path], vendor: str, tmp_path: Path
) -> None:
    """The pipeline's path: de-identify, then convert the research copy."""
    research = tmp_path / "research"
    research.mkdir()
    deidentify_slide(originals[vendor], research / "slide.tiff", KEY, DeidPolicy.default())
    target = open_store(tmp_path / "pyramids")
    result = convert_slide(
        open_store(research), "slide.tiff", target, "p.ome.zarr", ConvertOptions()
    )
    assert result.shape == (HEIGHT, WIDTH)
    assert result.mpp == pytest.approx(MPP, rel=1e-4)
    group = open_pyramid(target, "p.ome.zarr")
    assert np.array_equal(pixels(group, 0), np.moveaxis(level0(originals[vendor]), -1, 0))
    multiscale = attributes(group)["ome"]["multiscales"][0]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == pytest.approx([MPP, MPP], rel=1e-4)
    record = attributes(group)["mira"]["slide"]
    assert record["format"] == FORMATS[vendor]
    assert record["objective_power"] == OBJECTIVES[vendor]
    text = all_text(target, "p.ome.zarr")
    assert not [token for token in PLANTED if token in text]


def test_scn_macro_larger_than_the_tissue_is_never_level_0(tmp_path: Path) -> None:
    """A small tissue region scanned at 20x can be smaller than the photograph of the whole
    glass: the SCN's own metadata (the image covering the collection) names the macro, so
    neither de-identification nor conversion takes it for level 0."""
    path = write_scn_slide(tmp_path / "small.scn", macro_size=(2048, 1024))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.imagelength * tif.pages.first.imagewidth > HEIGHT * WIDTH
    out = tmp_path / "slide.tiff"
    result = deidentify_slide(path, out, KEY, DeidPolicy.default())
    assert result.removed_images == ("macro",) and result.levels == 2
    assert np.array_equal(level0(out), level0(path))
    assert level0(path).shape == (HEIGHT, WIDTH, 3)
    target = open_store(tmp_path / "p")
    converted = convert_slide(
        open_store(tmp_path), path.name, target, "p.ome.zarr", ConvertOptions()
    )
    assert converted.shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize("vendor", ["hamamatsu", "leica"])
def test_converts_the_original_vendor_file_too(
    originals: dict[str, Path], vendor: str, tmp_path: Path
) -> None:
    """``mira convert`` on a scanner's file as delivered (an SCN's macro comes first)."""
    path = originals[vendor]
    target = open_store(tmp_path / "pyramids")
    convert_slide(open_store(path.parent), path.name, target, "p.ome.zarr", ConvertOptions())
    group = open_pyramid(target, "p.ome.zarr")
    assert np.array_equal(pixels(group, 0), np.moveaxis(level0(path), -1, 0))


def test_multiplexed_qptiff_keeps_its_channels_through_deid_and_conversion(
    tmp_path: Path,
) -> None:
    """A page per channel: de-identification keeps every channel page of every level (names
    and colours kept, identifiers gone); conversion stacks them on the ``c`` axis, channel
    for channel, with their names in the OMERO metadata and the record."""
    channels = ("DAPI", "CD8", "PanCK")
    path = write_multiplexed_qptiff(tmp_path / "S24-01234_DOE_JOHN.qptiff", channels)
    with path.open("rb") as stream:
        inspection = inspect_object(stream)
    assert inspection.slide is not None and inspection.slide.vendor == "akoya"
    out = tmp_path / "out.tiff"
    result = deidentify_slide(path, out, KEY, DeidPolicy.default())
    assert result.vendor == "akoya" and result.levels == 2 and result.removed_images == ()
    data = out.read_bytes()
    assert not [token for token in PLANTED if token.encode() in data]
    assert scan_for_phi([("slides/x.tiff", data)], result.identifiers) == []
    with tifffile.TiffFile(path) as before, tifffile.TiffFile(out) as after:
        assert slide_vendor(after) == "akoya"
        assert vendor_optics(after, after.pages.first).channels == channels
        assert np.array_equal(before.series[0].asarray(), after.series[0].asarray())
        assert after.series[0].shape == (3, HEIGHT, WIDTH)
        assert [s.name for s in after.series] == ["Baseline", "Thumbnail"]
    target = open_store(tmp_path / "p")
    converted = convert_slide(
        open_store(tmp_path), out.name, target, "p.ome.zarr", ConvertOptions(chunk=128)
    )
    assert converted.shape == (HEIGHT, WIDTH)
    assert converted.mpp == pytest.approx(MPP, rel=1e-4)
    group = open_pyramid(target, "p.ome.zarr")
    with tifffile.TiffFile(path) as before:
        assert np.array_equal(pixels(group, 0), before.series[0].levels[0].asarray())
    ImageV05.from_zarr(group)
    ome = attributes(group)["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == list(channels)
    assert attributes(group)["mira"]["slide"]["channels"] == list(channels)
    with pytest.raises(InvalidInput, match="codec jpeg"):
        convert_slide(
            open_store(tmp_path), out.name, target, "q.ome.zarr", ConvertOptions(codec="jpeg")
        )


def test_sample_data_emits_an_ndpi_that_ingests_deidentifies_and_converts(
    tmp_path: Path,
) -> None:
    """``mira sample-data --ndpi-slides 1`` (the demo asks for one): an NDPI in the pathology
    batch, label text and case in its tags, gone after de-identification, converted losslessly."""
    summary = generate_sample_data(
        tmp_path / "drop", patients=1, slides=0, slide_size=1024, ndpi_slides=1
    )
    (path,) = sorted((tmp_path / "drop").rglob("*.ndpi"))
    truth = json.loads(summary.phi_truth.read_text())["patients"][0]["slides"][0]
    assert truth["case_number"] in path.name
    slide = openslide.OpenSlide(str(path))
    assert slide.properties["openslide.vendor"] == "hamamatsu"
    assert slide.properties["hamamatsu.SourceLens"] == "20"
    assert set(slide.associated_images) == {"macro"}
    with path.open("rb") as stream:
        inspection = inspect_object(stream)
    assert inspection.slide is not None and inspection.slide.vendor == "hamamatsu"
    research = tmp_path / "research"
    research.mkdir()
    result = deidentify_slide(path, research / "s.tiff", KEY, DeidPolicy.default())
    assert result.removed_images == ("macro",)
    data = (research / "s.tiff").read_bytes()
    assert truth["case_number"].encode() not in data and truth["scanscope_id"].encode() not in data
    assert scan_for_phi([("slides/s.tiff", data)], result.identifiers) == []
    target = open_store(tmp_path / "pyramids")
    convert_slide(open_store(research), "s.tiff", target, "p.ome.zarr", ConvertOptions())
    assert np.array_equal(
        pixels(open_pyramid(target, "p.ome.zarr"), 0), np.moveaxis(level0(path), -1, 0)
    )


def test_mrxs_converts_through_openslide_with_its_scale(tmp_path: Path) -> None:
    """A generated MIRAX slide (no package ships one): conversion only, through OpenSlide's
    read_region; level 0 equals what OpenSlide shows, the scale is MIRAX's pixel size, and
    neither the slide name nor the barcode nor the associated images reach the pyramid."""
    # The completion record keeps the source key: converting a scanner's file as the way to
    # de-identify it starts from a file named without identifiers (docs/slides.md).
    path = write_mrxs_slide(tmp_path / "slides" / "slide-0001.mrxs")
    slide = openslide.OpenSlide(str(path))
    assert slide.properties["openslide.vendor"] == "mirax"
    assert set(slide.associated_images) == {"macro", "label"}
    expected = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    target = open_store(tmp_path / "pyramids")
    result = convert_slide(
        open_store(path.parent), path.name, target, "p.ome.zarr", ConvertOptions(chunk=128)
    )
    assert result.shape == (HEIGHT, WIDTH) and result.mpp == pytest.approx(MPP)
    group = open_pyramid(target, "p.ome.zarr")
    assert np.array_equal(pixels(group, 0), np.moveaxis(expected, -1, 0))
    record = attributes(group)["mira"]["slide"]
    assert record == {
        "format": "mrxs",
        "vendor": "mirax",
        "objective_power": 20.0,
        "mpp_x": pytest.approx(MPP),
        "mpp_y": pytest.approx(MPP),
    }
    text = all_text(target, "p.ome.zarr")
    assert not [token for token in PLANTED if token in text]
    assert sorted(info.key.split("/")[1] for info in target.list("p.ome.zarr"))[-1] == "zarr.json"


def test_mrxs_refuses_jpeg_passthrough_and_is_not_a_tiff_for_deid(tmp_path: Path) -> None:
    path = write_mrxs_slide(tmp_path / "slides" / "case.mrxs")
    with pytest.raises(InvalidInput, match="codec jpeg"):
        convert_slide(
            open_store(path.parent), path.name, open_store(tmp_path / "p"), "p.ome.zarr",
            ConvertOptions(codec="jpeg"),
        )  # fmt: skip
    with pytest.raises(InvalidInput, match="not a readable TIFF"):
        deidentify_slide(path, tmp_path / "out.tiff", KEY, DeidPolicy.default())


@pytest.mark.prefect
@pytest.mark.slow
def test_pipeline_takes_the_sample_ndpi_through_every_stage(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``mira demo`` does with its NDPI: ``mira run`` ingests, de-identifies (catalog row
    says hamamatsu, macro removed) and converts it."""
    register_commands()
    gateway, research = tmp_path / "gateway", tmp_path / "research"
    generate_sample_data(gateway / "dropzone", patients=1, slides=0, slide_size=1024, ndpi_slides=1)
    monkeypatch.setenv("MIRA_DEID_SECRET", "vendor-pipeline-test-secret-0123456789")
    for name in ("MIRA_GATEWAY_URL", "MIRA_RESEARCH_URL"):
        monkeypatch.delenv(name, raising=False)
    flags = ["--gateway", str(gateway), "--research", str(research)]
    result = CliRunner().invoke(app, [*flags, "run", "batch-0002-pathology"])
    assert result.exit_code == 0, result.output
    store = open_store(research)
    slides = catalog.read_table(store, "slides").to_pylist()
    assert [row["vendor"] for row in slides] == ["hamamatsu"]
    (pyramid,) = [o.key for o in store.list("pyramids") if o.key.endswith(".ome.zarr/zarr.json")]
    record = store.read_json(pyramid)["attributes"]["mira"]["slide"]
    assert record["format"] == "ndpi" and record["mpp_x"] == pytest.approx(0.4416, rel=1e-4)

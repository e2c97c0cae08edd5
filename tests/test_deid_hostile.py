"""Hostile and odd inputs on the de-identification side (issue 13, items 1, 4, 5 and 11).

Each case is a fixture the test builds: a slide with a label page that looks like a pyramid
level, a batch named after its patient, ordinary folder names, a file replaced after ingest.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

from mira.errors import PhiLeak
from storage import Store, open_store
from tasks.deid import DeidPolicy, deidentify_slide, input_identifiers
from tasks.deid.stage import deidentify_batch
from tasks.ingest import ingest_batch
from tests import slides as slide_fixtures

pytest_plugins = ["tests.prefect_fixtures"]

KEY = b"hostile-test-key-0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures"
LABEL_LINES = ("DOE, JANE", "MRN 3779036", "DOB 04/12/1961")


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a little noise (compresses like tissue)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1)
    return (base + rng.integers(0, 8, base.shape)).clip(0, 255).astype(np.uint8)


def label_pixels(size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A glass label photographed: the patient's name, MRN and birth date in black on white."""
    image = Image.new("RGB", (size[1], size[0]), (250, 250, 246))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for row, text in enumerate(LABEL_LINES):
        draw.text((24, 40 + row * 70), text, fill=(10, 10, 20), font=font)
    return np.asarray(image)


def write_label_tiff(path: Path, label_shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A generic tiled TIFF: level 0, one reduced level, then a TILED label described
    ``Label_Image`` (Ventana's spelling) as the third page; returns level 0."""
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(256, 256), **common)
        tif.write(level0[::2, ::2], tile=(256, 256), subfiletype=1, **common)
        tif.write(label_pixels(label_shape), tile=(256, 256), description="Label_Image", **common)
    return level0


def page_segments(page: tifffile.TiffPage) -> list[bytes]:
    """The raw compressed tiles (or strips) of one page."""
    handle = page.parent.filehandle
    out = []
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        handle.seek(offset)
        out.append(handle.read(count))
    return out


def pyramid_segments(source: Path | io.BytesIO) -> list[tuple[tuple[int, ...], list[bytes]]]:
    """(shape, raw tiles) of every tiled page of a file, SubIFDs included, largest first."""
    with tifffile.TiffFile(source) as tif:
        pages: list[tifffile.TiffPage] = []
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            pages.append(page)
            pages += list(tifffile.TiffPages(page)) if page.subifds else []  # type: ignore[arg-type]
        tiled = [(tuple(p.shape), page_segments(p)) for p in pages if p.is_tiled]
    return sorted(tiled, key=lambda item: -int(np.prod(item[0])))


def all_shapes(source: Path | io.BytesIO) -> list[tuple[int, ...]]:
    """The shape of every page of a file, SubIFDs included."""
    with tifffile.TiffFile(source) as tif:
        shapes = []
        for page in tif.pages:
            assert isinstance(page, tifffile.TiffPage)
            shapes.append(tuple(page.shape))
            subifds = tifffile.TiffPages(page) if page.subifds else []
            shapes += [tuple(sub.shape) for sub in subifds]
    return shapes


def ct_file(
    name: str = "DOE^JANE",
    patient_id: str = "MRN3779036",
    *,
    body_part: str = "CHEST",
    description: str = "CT CHEST",
    number: int = 1,
) -> bytes:
    """pydicom's real CT slice as one patient's file, with its own UIDs."""
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str)
    ds = pydicom.dcmread(source)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient_id, "19610412"
    ds.BodyPartExamined, ds.StudyDescription = body_part, description
    ds.InstanceNumber = number

    def uid(kind: str) -> UID:
        return generate_uid(entropy_srcs=[kind, patient_id, str(number)])

    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("instance")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def research_leaks(research: Store, tokens: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (key, token) where a token occurs in a research object's key or bytes."""
    found = []
    for info in research.list():
        data = research.read_bytes(info.key).lower()
        for token in tokens:
            if token.lower() in info.key.lower() or token.lower().encode() in data:
                found.append((info.key, token))
    return found


def upload(gateway: Store, batch: str, files: dict[str, bytes]) -> None:
    """A complete drop-zone batch: the files, then the ``_READY`` marker."""
    for path, data in files.items():
        gateway.write_bytes(f"dropzone/{batch}/{path}", data)
    gateway.write_bytes(f"dropzone/{batch}/_READY", b"")


# Item 1: PHI in slide pixels.


def test_a_tiled_label_image_page_is_dropped_by_geometry(tmp_path: Path) -> None:
    src = tmp_path / "slide.tif"
    write_label_tiff(src)
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert (512, 512, 3) not in all_shapes(out)
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]
    assert pyramid_segments(out) == pyramid_segments(src)[:2]
    assert result.levels == 2 and "label" in result.removed_images


def test_a_label_page_in_the_research_store_never_arrives(local_store: Store) -> None:
    """The reproduced leak, end to end: ingest, de-identification and the scan let the label
    page through and it was published."""
    gateway, research = local_store.child("gateway"), local_store.child("research")
    buffer = io.BytesIO()
    write_label_tiff(buffer)  # type: ignore[arg-type]
    upload(gateway, "batch-label", {"CASE1/slide.tif": buffer.getvalue()})
    ingest_batch(gateway, "batch-label")
    result = deidentify_batch(gateway, research, "batch-label", KEY, DeidPolicy.default())
    assert result.slides == 1
    slides = [o.key for o in research.list("slides")]
    assert len(slides) == 1
    published = io.BytesIO(research.read_bytes(slides[0]))
    assert all_shapes(published) == [(1024, 1536, 3), (512, 768, 3)]


def test_description_can_only_remove_a_page_that_fits_the_pyramid(tmp_path: Path) -> None:
    """A label whose size is exactly a 4x reduction of level 0: the description drops it."""
    src = tmp_path / "slide.tif"
    write_label_tiff(src, label_shape=(256, 384))
    out = tmp_path / "out.tif"
    deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]


def test_level_zero_is_found_when_the_label_comes_first(tmp_path: Path) -> None:
    """Ventana BIF order: the label is page 0, the pyramid follows."""
    src = tmp_path / "slide.tif"
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(src) as tif:
        tif.write(label_pixels(), tile=(256, 256), description="Label_Image", **common)
        tif.write(level0, tile=(256, 256), description="level=0 mag=40", **common)
        tif.write(level0[::4, ::4], tile=(256, 256), description="level=1 mag=10", **common)
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (256, 384, 3)]
    assert result.levels == 2
    with tifffile.TiffFile(out) as tif:
        assert np.array_equal(tif.pages.first.asarray(), level0)


def test_a_page_that_is_no_reduction_of_level_zero_is_dropped(tmp_path: Path) -> None:
    """An undescribed tiled page whose aspect ratio differs from level 0 (a label, a macro)."""
    src = tmp_path / "slide.tif"
    level0 = tissue(1024, 1536)
    common: dict[str, Any] = {"compression": "zlib", "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(src) as tif:
        tif.write(level0, tile=(256, 256), **common)
        tif.write(level0[::2, ::2], tile=(256, 256), **common)
        tif.write(label_pixels((512, 1024)), tile=(256, 256), **common)  # 2:1, not 3:2
    out = tmp_path / "out.tif"
    deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert all_shapes(out) == [(1024, 1536, 3), (512, 768, 3)]


def write_format(kind: str, path: Path) -> Path:
    """A slide in one of the real layouts the project generates or ships."""
    if kind == "cmu-aperio":
        path.write_bytes((FIXTURES / "cmu_small_region.svs").read_bytes())
        return path
    if kind == "sample-svs":
        from tasks.sample.slides import slide_identity, write_svs

        write_svs(path, slide_identity("DOE^JANE", "MRN3779036", "2023-06-12", 0, 7), 1024)
        return path
    if kind == "svs-jpeg2000":
        return slide_fixtures.write_slide(path, 700, 900, kind="svs", codec="jpeg2000", levels=3)
    return slide_fixtures.write_slide(path, 700, 900, kind=kind, levels=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["svs", "svs-jpeg2000", "tiff", "ome", "sample-svs", "cmu-aperio"])
def test_real_formats_keep_their_pyramid_and_nothing_else(kind: str, tmp_path: Path) -> None:
    src = write_format(kind, tmp_path / "in.tif")
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    source_levels = pyramid_segments(src)
    assert pyramid_segments(out) == source_levels
    assert result.levels == len(source_levels)
    with tifffile.TiffFile(src) as original, tifffile.TiffFile(out) as tif:
        source_series = {s.name.lower() for s in original.series}
        assert not {"label", "macro"} & {s.name.lower() for s in tif.series}
        assert {"label", "macro"} & source_series <= set(result.removed_images)
        assert len(tif.series[0].levels) == len(original.series[0].levels)
        # Same tiles, same tags: a real Aperio file's RGB-tagged JPEG decodes to the same colours.
        smallest, source_smallest = tif.series[0].levels[-1], original.series[0].levels[-1]
        assert np.array_equal(smallest.asarray(), source_smallest.asarray())
        if original.is_svs:
            assert tif.is_svs and tif.series[1].name == "Thumbnail"
            assert_thumbnail_is_made_of_the_pyramid(tif)


def assert_thumbnail_is_made_of_the_pyramid(tif: tifffile.TiffFile) -> None:
    """The thumbnail is rebuilt from the smallest level: each of its pixels is a level pixel."""
    thumbnail = tif.series[1].asarray()
    smallest = tif.series[0].levels[-1].asarray()
    step = -(-max(smallest.shape[:2]) // max(thumbnail.shape[:2]))
    expected = smallest[::step, ::step]
    assert thumbnail.shape == expected.shape
    assert np.abs(thumbnail.astype(int) - expected.astype(int)).mean() < 8  # JPEG


# Item 5: ordinary folder names.


@pytest.mark.parametrize(
    "path",
    [
        "DICOM/PA000000/ST000000/SE000000/IM000000",  # the standard media layout
        "CHEST/IM0001.dcm",  # named by the Body Part Examined the output keeps
    ],
)
def test_ordinary_folder_names_do_not_block_a_batch(local_store: Store, path: str) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    upload(gateway, "batch-folders", {path: ct_file(description="AXIAL CHEST")})
    ingest_batch(gateway, "batch-folders")
    result = deidentify_batch(gateway, research, "batch-folders", KEY, DeidPolicy.default())
    assert result.instances == 1 and not result.quarantined


def test_a_name_in_a_folder_is_still_caught(local_store: Store) -> None:
    """A descriptor that kept the folder's patient name (not the file's own): the scan holds
    the file as phi-suspect."""
    gateway, research = local_store.child("gateway"), local_store.child("research")
    upload(
        gateway, "batch-names", {"SMITH_MARIA/CT/IM0001.dcm": ct_file(description="SMITH_MARIA")}
    )
    ingest_batch(gateway, "batch-names")
    result = deidentify_batch(gateway, research, "batch-names", KEY, DeidPolicy.default())
    assert result.quarantined == {"phi-suspect": 1} and result.instances == 0
    assert [o.key for o in research.list() if not o.key.startswith("catalog/")] == []
    reason = gateway.read_json("quarantine/batch-names/SMITH_MARIA/CT/IM0001.dcm.reason.json")
    assert reason["attributes"] == ["(0008,1030)"]  # Study Description


def test_phi_scan_command_does_not_count_media_folder_names(local_store: Store) -> None:
    """``mira phi-scan --against`` takes identifiers from the inputs' paths by the same rule."""
    local_store.write_bytes("DICOM/PA000000/ST000000/SMITH_MARIA/IM000000", ct_file())
    found = {token.casefold() for token in input_identifiers(local_store)}
    assert "dicom" not in found
    assert {"smith_maria", "pa000000", "doe"} <= found


# Item 4: the batch name.

PATIENT_BATCH = "DOE_JANE_MRN3779036"
BATCH_TOKENS = ("DOE", "JANE", "MRN3779036", "3779036")


def test_a_batch_named_after_its_patient_publishes_nothing(store: Store) -> None:
    gateway, research = store.child("gateway"), store.child("research")
    files = {f"CT/IM000{n}.dcm": ct_file(number=n) for n in (1, 2)}
    upload(gateway, PATIENT_BATCH, files)
    ingest_batch(gateway, PATIENT_BATCH)
    with pytest.raises(PhiLeak, match="batch name") as refused:
        deidentify_batch(gateway, research, PATIENT_BATCH, KEY, DeidPolicy.default())
    assert "neutral batch name" in str(refused.value) and PATIENT_BATCH not in str(refused.value)
    assert research_leaks(research, BATCH_TOKENS) == []
    assert list(research.list()) == []
    # The documented way out: forget the refused batch's ingest, upload under a plain name.
    gateway.delete_prefix(f"ingest/{PATIENT_BATCH}")
    upload(gateway, "batch-0005", files)
    ingest_batch(gateway, "batch-0005")
    assert (
        deidentify_batch(gateway, research, "batch-0005", KEY, DeidPolicy.default()).instances == 2
    )
    assert research_leaks(research, BATCH_TOKENS) == []


@pytest.mark.prefect
@pytest.mark.slow
def test_mira_run_of_a_batch_named_after_its_patient_leaves_no_trace(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole pipeline, as ``mira run`` drives it: it stops at de-identification with the
    reason, and no key or byte of the research store holds a token of the name."""
    from typer.testing import CliRunner

    from mira.cli.root import app, register_commands

    register_commands()
    gateway, research = tmp_path / "gateway", tmp_path / "research"
    folder = gateway / "dropzone" / PATIENT_BATCH / "CT"
    folder.mkdir(parents=True)
    for number in (1, 2):
        (folder / f"IM000{number}.dcm").write_bytes(ct_file(number=number))
    (folder.parent / "_READY").write_bytes(b"")
    monkeypatch.setenv("MIRA_DEID_SECRET", "hostile-test-secret-0123456789abcdef")
    for name in ("MIRA_GATEWAY_URL", "MIRA_RESEARCH_URL"):
        monkeypatch.delenv(name, raising=False)
    flags = ["--gateway", str(gateway), "--research", str(research)]
    result = CliRunner().invoke(app, [*flags, "run", PATIENT_BATCH])
    assert result.exit_code == 1
    assert "the batch name holds identifiers" in result.output
    research.mkdir(exist_ok=True)
    assert research_leaks(open_store(research), BATCH_TOKENS) == []


# Item 11: files changed after ingest.

SWAPPED_TOKENS = ("WAINWRIGHT", "MRN4418207", "4418207")


def quarantine_reason(gateway: Store, batch: str, path: str) -> dict[str, Any]:
    reason: dict[str, Any] = gateway.read_json(f"quarantine/{batch}/{path}.reason.json")
    return reason


def test_a_dicom_replaced_after_ingest_is_quarantined(store: Store) -> None:
    """A same-size file of another patient put in place of an ingested one."""
    gateway, research = store.child("gateway"), store.child("research")
    kept = ct_file("SMITHERS^JANE", "MRN3779036", number=1)
    replaced = ct_file("SMITHERS^JANE", "MRN3779036", number=2)
    upload(gateway, "batch-swap", {"CT/IM0001.dcm": kept, "CT/IM0002.dcm": replaced})
    ingest_batch(gateway, "batch-swap")
    other = ct_file("WAINWRIGHT^AL", "MRN4418207", number=2)
    assert len(other) == len(replaced)
    gateway.write_bytes("dropzone/batch-swap/CT/IM0002.dcm", other)
    result = deidentify_batch(gateway, research, "batch-swap", KEY, DeidPolicy.default())
    assert result.instances == 1 and result.quarantined == {"changed-after-ingest": 1}
    assert research_leaks(research, SWAPPED_TOKENS) == []
    reason = quarantine_reason(gateway, "batch-swap", "CT/IM0002.dcm")
    assert reason["reason"] == "changed-after-ingest" and reason["stage"] == "deidentify"


def test_a_slide_changed_after_ingest_is_quarantined(store: Store) -> None:
    """One byte of one tile changed in place: same size, same structure, other pixels."""
    gateway, research = store.child("gateway"), store.child("research")
    buffer = io.BytesIO()
    write_label_tiff(buffer)  # type: ignore[arg-type]
    original = buffer.getvalue()
    upload(gateway, "batch-slide-swap", {"CASE1/slide.tif": original})
    ingest_batch(gateway, "batch-slide-swap")
    with tifffile.TiffFile(io.BytesIO(original)) as tif:
        offset = int(tif.pages.first.dataoffsets[0]) + 10
    changed = bytearray(original)
    changed[offset] ^= 0xFF
    gateway.write_bytes("dropzone/batch-slide-swap/CASE1/slide.tif", bytes(changed))
    result = deidentify_batch(gateway, research, "batch-slide-swap", KEY, DeidPolicy.default())
    assert result.slides == 0 and result.quarantined == {"changed-after-ingest": 1}
    assert [o.key for o in research.list("slides")] == []
    reason = quarantine_reason(gateway, "batch-slide-swap", "CASE1/slide.tif")
    assert reason["reason"] == "changed-after-ingest"


@pytest.mark.s3
def test_a_recorded_version_is_checked(s3_lock_store: Store) -> None:
    """On a versioned bucket ingest records the version it read: a newer version is a change
    after ingest even when its bytes are the same."""
    gateway, research = s3_lock_store.child("gateway"), s3_lock_store.child("research")
    data = ct_file(number=7)
    upload(gateway, "batch-versions", {"CT/IM0001.dcm": data})
    ingest_batch(gateway, "batch-versions")
    key = "dropzone/batch-versions/CT/IM0001.dcm"
    from tasks.ingest import read_accepted

    recorded = read_accepted(gateway, "batch-versions").column("version_id").to_pylist()
    assert recorded == [gateway.info(key).version_id], "ingest records the version it read"
    gateway.write_bytes(key, data)  # same bytes, a new version
    result = deidentify_batch(gateway, research, "batch-versions", KEY, DeidPolicy.default())
    assert result.instances == 0 and result.quarantined == {"changed-after-ingest": 1}
    assert "version" in quarantine_reason(gateway, "batch-versions", "CT/IM0001.dcm")["detail"]


def jpeg_bomb_svs(path: Path) -> Path:
    """An SVS whose smallest level's one JPEG tile declares 60000 x 60000 pixels (the tile is
    256 x 256): rebuilding the thumbnail must not decode it."""
    slide_fixtures.write_slide(path, 700, 900, kind="svs", levels=3)
    with tifffile.TiffFile(path) as tif:
        smallest = tif.series[0].levels[-1].keyframe
        offset, count = int(smallest.dataoffsets[0]), int(smallest.databytecounts[0])
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0", offset, offset + count)
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path


def test_a_jpeg_bomb_in_the_smallest_level_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    src = jpeg_bomb_svs(tmp_path / "bomb.svs")
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from mira.errors import DeidentificationError\n"
        "from tasks.deid import DeidPolicy, deidentify_slide\n"
        "try:\n"
        f"    deidentify_slide({str(src)!r}, {str(tmp_path / 'out.svs')!r}, b'k' * 32,"
        " DeidPolicy.default())\n"
        "except DeidentificationError as err:\n"
        "    print('refused:', err)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert "refused:" in run.stdout and "60000" in run.stdout, run.stderr[-3000:]

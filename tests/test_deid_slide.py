"""Whole-slide de-identification on a generated Aperio SVS (and a generic pyramidal TIFF)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mira.errors import InvalidInput
from tasks.deid import DeidOption, DeidPolicy, deidentify_slide, scan_for_phi

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
HEADER = "Aperio Image Library v10.0.51"
SECRETS = ("S12-34567 SMITH", "jdoe", "ACC-998877", "SS1234", "1004486", "12/29/09")


def tissue(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with a little noise: compresses like tissue, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1)
    return (base + rng.integers(0, 8, base.shape)).clip(0, 255).astype(np.uint8)


def write_svs(path: Path, size: tuple[int, int] = (768, 1024)) -> np.ndarray:
    """An Aperio-like SVS: 3 JPEG-tiled levels (256 px tiles), thumbnail, label and macro, with
    identifying metadata in the description and in TIFF tags."""
    height, width = size
    level0 = tissue(height, width, 0)
    geometry = f"{width}x{height} [0,100 {width}x{height - 100}] (256x256)"
    description = (
        f"{HEADER}\r\n{geometry} JPEG/RGB Q=70|AppMag = 20|StripeWidth = 2040|"
        "ScanScope ID = SS1234|Filename = S12-34567 SMITH|Date = 12/29/09|Time = 09:59:15|"
        "Time Zone = GMT-08:00|User = jdoe|MPP = 0.4990|Left = 25.691574|Top = 23.449873|"
        "Barcode = ACC-998877|ImageID = 1004486"
    )
    identifying = [(315, "s", 0, "Dr jdoe", True), (316, "s", 0, "SCANNER-PC-SS1234", True)]
    with tifffile.TiffWriter(path) as tif:
        jpeg = {"compression": "jpeg", "photometric": "rgb", "metadata": None}
        tif.write(
            level0,
            tile=(256, 256),
            description=description,
            software="ScanScope",
            datetime="2009:12:29 09:59:15",
            extratags=identifying,
            **jpeg,
        )
        thumb = level0[::4, ::4]
        tif.write(
            thumb,
            rowsperstrip=16,
            description=f"{HEADER}\r\n{width}x{height} -> {width // 4}x{height // 4} - |AppMag = 20"
            "|Filename = S12-34567 SMITH|User = jdoe",
            **jpeg,
        )
        for factor in (2, 4):
            tif.write(
                level0[::factor, ::factor],
                tile=(256, 256),
                description=f"{HEADER}\r\n{geometry} -> {width // factor}x{height // factor} "
                "JPEG/RGB Q=70",
                **jpeg,
            )
        label = np.full((200, 300, 3), 255, np.uint8)
        tif.write(
            label,
            compression="lzw",
            photometric="rgb",
            subfiletype=1,
            description=f"{HEADER}\r\nlabel 300x200",
            metadata=None,
        )
        tif.write(
            tissue(200, 600, 1),
            subfiletype=9,
            description=f"{HEADER}\r\nmacro 600x200",
            **jpeg,
        )
    return level0


def raw_segments(path: Path | io.BytesIO) -> list[list[bytes]]:
    """The raw compressed tiles of every tiled page, in page order."""
    with tifffile.TiffFile(path) as tif:
        handle = tif.filehandle
        levels = []
        for page in tif.pages:
            if not page.is_tiled:
                continue
            tiles = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                handle.seek(offset)
                tiles.append(handle.read(count))
            levels.append(tiles)
        return levels


@pytest.fixture
def svs(tmp_path: Path) -> Path:
    path = tmp_path / "S12-34567_SMITH.svs"
    write_svs(path)
    return path


def test_label_and_macro_removed_metadata_scrubbed_tiles_identical(
    svs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.svs"
    result = deidentify_slide(svs, out, KEY, DeidPolicy.default())
    assert result.vendor == "aperio"
    assert sorted(result.removed_images) == ["label", "macro"]
    assert result.levels == 3
    assert result.mpp == pytest.approx(0.499)
    assert result.magnification == 20
    assert raw_segments(out) == raw_segments(svs)
    with tifffile.TiffFile(out) as tif, tifffile.TiffFile(svs) as original:
        assert tif.is_svs
        names = [series.name for series in tif.series]
        assert "Label" not in names and "Macro" not in names and "Thumbnail" in names
        assert len(tif.series[0].levels) == 3
        assert np.array_equal(tif.series[0].levels[0].asarray(), original.series[0].asarray())
        description = tif.pages[0].description
        assert description.startswith(HEADER)
        for key in ("Filename", "Date", "User", "Barcode", "ScanScope ID", "ImageID", "Time"):
            assert f"|{key} =" not in description
        assert "|AppMag = 20" in description and "|MPP = 0.4990" in description
        for page in tif.pages:
            for tag in ("DateTime", "Artist", "HostComputer", "Software", "DocumentName"):
                assert tag not in page.tags  # type: ignore[union-attr]


def test_no_identifier_of_the_input_is_left_anywhere(svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.svs"
    result = deidentify_slide(svs, out, KEY, DeidPolicy.default())
    identifiers = {i.casefold() for i in result.identifiers}
    expected = (
        "S12-34567 SMITH",
        "SMITH",
        "jdoe",
        "ACC-998877",
        "SS1234",
        "20091229",
        "12/29/2009",
    )
    for secret in expected:
        assert secret.casefold() in identifiers, secret
    data = out.read_bytes()
    assert scan_for_phi([(f"slides/{result.slide_id}.svs", data)], result.identifiers) == []
    for secret in SECRETS:
        assert secret.encode() not in data
    hits = scan_for_phi([("in.svs", svs.read_bytes())], result.identifiers)
    assert any(hit.location == "page[0].ImageDescription" for hit in hits)
    assert any(hit.location == "page[1].ImageDescription" for hit in hits)  # the thumbnail


def test_slide_pseudonym_is_keyed_and_stable(svs: Path, tmp_path: Path) -> None:
    first = deidentify_slide(svs, tmp_path / "a.svs", KEY, DeidPolicy.default())
    again = deidentify_slide(svs, tmp_path / "b.svs", KEY, DeidPolicy.default())
    other = deidentify_slide(svs, tmp_path / "c.svs", OTHER_KEY, DeidPolicy.default())
    assert first.slide_id == again.slide_id != other.slide_id
    assert (tmp_path / "a.svs").read_bytes() == (tmp_path / "b.svs").read_bytes()


def test_device_identity_option_keeps_the_scanner_id(svs: Path) -> None:
    policy = DeidPolicy(options=DeidPolicy.default().options | {DeidOption.RETAIN_DEVICE_IDENTITY})
    buffer = io.BytesIO()
    with svs.open("rb") as source:
        deidentify_slide(source, buffer, KEY, policy)
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        assert "|ScanScope ID = SS1234" in tif.pages[0].description


def test_generic_pyramidal_tiff_loses_label_and_description(tmp_path: Path) -> None:
    src = tmp_path / "generic.tif"
    image = tissue(512, 512, 2)
    with tifffile.TiffWriter(src) as tif:
        tif.write(
            image, tile=(256, 256), compression="zlib", description="patient jdoe", metadata=None
        )
        tif.write(
            image[::2, ::2], tile=(256, 256), compression="zlib", subfiletype=1, metadata=None
        )
        tif.write(np.zeros((64, 64, 3), np.uint8), description="label jdoe", metadata=None)
    out = tmp_path / "out.tif"
    result = deidentify_slide(src, out, KEY, DeidPolicy.default())
    assert result.vendor == "generic" and result.removed_images == ("label",)
    assert raw_segments(out) == raw_segments(src)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 2
        assert all("ImageDescription" not in page.tags for page in tif.pages)  # type: ignore[union-attr]
        assert np.array_equal(tif.pages[0].asarray(), image)  # type: ignore[union-attr]


def test_a_non_tiff_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        deidentify_slide(
            io.BytesIO(b"not a tiff at all"), tmp_path / "x.tif", KEY, DeidPolicy.default()
        )


def test_openslide_opens_the_output_when_installed(svs: Path, tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    out = tmp_path / "out.svs"
    deidentify_slide(svs, out, KEY, DeidPolicy.default())
    slide = openslide.OpenSlide(str(out))
    assert slide.properties["openslide.vendor"] == "aperio"
    assert slide.level_count == 3
    assert set(slide.associated_images) == {"thumbnail"}
    region = np.asarray(slide.read_region((0, 0), 0, (256, 256)).convert("RGB"))
    with tifffile.TiffFile(out) as tif:
        level0 = tif.series[0].levels[0].asarray()
        expected = level0.reshape(level0.shape[-3:])[:256, :256].astype(int)
    assert np.abs(region.astype(int) - expected).max() <= 2  # two JPEG decoders

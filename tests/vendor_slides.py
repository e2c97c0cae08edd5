"""Small slides in each scanner vendor's TIFF layout, with the vendor's real tag and description
structure (so tifffile flags them as that vendor) and identifiers planted where the vendor puts them.

- NDPI (Hamamatsu): written by ``tasks.sample.ndpi`` (64-bit offsets, restart-marker JPEG strips,
  McuStarts, tags 65420+, a macro with Magnification -1).
- SCN (Leica): BigTIFF, the first page's description the SCN XML (collection, macro image covering
  the collection, main image with levels by IFD), barcode and creation dates in the XML.
- BIF (Ventana): ``Label_Image`` (first, with the XMP ``iScan``: ScanRes, Magnification,
  barcode, dates, unit number) and ``Thumbnail`` pages, levels described ``level=N mag=M
  quality=Q``, level 0's XMP ``EncodeInfo`` (scan area, tile joints numbered from the bottom).
- Philips TIFF: software ``Philips DP v1.0``, DICOM-in-XML description with one
  ``DICOM_PIXEL_SPACING`` per level, ``Macro`` and ``Label`` pages, dates and barcode in the XML.
- MRXS (3DHISTECH MIRAX): generated, see ``write_mrxs_slide`` (no package ships one).
- QPTIFF (Akoya/PerkinElmer): software ``PerkinElmer-QPI``, an XML description per page
  (``ImageType``, channel ``Name``, ``Objective``, ``SlideID``, ``Barcode``, computer name,
  scan-profile path), full resolution, thumbnail, reduced resolution, overview and label.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from numpy.typing import NDArray

from tasks.sample.ndpi import NdpiIdentity, NdpiSlide, write_ndpi
from tests.slides import slide_pixels

Pixels = NDArray[np.uint8]
Size = tuple[int, int]  # (height, width) of level 0
HEIGHT, WIDTH, TILE = 512, 768, 256
MPP = 0.2527
# Planted identifiers: none of these may survive de-identification anywhere in the output.
NAME = "DOE^JOHN"
CASE = "S24-01234"
BARCODE = "BC-993217"
SERIAL = "SN-770122"
COMPUTER = "PATHLAB-WS07"
PATH = r"C:\Scans\DOE_JOHN\S24-01234"
DATE_ISO = "2024-03-14T09:26:53"
PLANTED = ("DOE", "JOHN", "S24-01234", "993217", "770122", "PATHLAB", "2024-03-14", "20240314")


def pyramid(height: int = HEIGHT, width: int = WIDTH, factor: int = 4) -> list[Pixels]:
    """Level 0 and one reduction by ``factor`` (point-sampled)."""
    full = slide_pixels(height, width)
    return [full, np.ascontiguousarray(full[::factor, ::factor])]


def glass(height: int, width: int, shade: int = 210) -> Pixels:
    """A label or macro photograph (its contents do not matter: it must go)."""
    image = np.full((height, width, 3), shade, np.uint8)
    image[height // 4 : height // 2, width // 8 : width // 2] = 20  # "printed text"
    return image


def _tiled(**extra: Any) -> dict[str, Any]:
    return {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", **extra}


def write_ndpi_slide(path: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    identity = NdpiIdentity(
        slide_label=f"{CASE} {NAME}",
        serial_number=SERIAL,
        reference=PATH,
    )
    return write_ndpi(
        path, NdpiSlide(tuple(pyramid(*size)), glass(96, 288), MPP, 20.0, identity=identity)
    )


def scn_xml(levels: list[Pixels], macro: Pixels) -> str:
    """The SCN XML: a 25 x 75 mm collection, a macro image over all of it, the main image."""
    glass_nm = (25_000_000, 75_000_000)
    height, width = levels[0].shape[:2]
    view = (round(width * MPP * 1000), round(height * MPP * 1000))
    dims = "".join(
        f'<dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" r="{r}" ifd="{r + 1}"/>'
        for r, lv in enumerate(levels)
    )
    barcode = base64.b64encode(BARCODE.encode()).decode()
    device = '<device model="Leica SCN400;Leica SCN" version="1.5.1.10804 2012/05/10 13:29:07"/>'
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="{CASE}_{NAME}" uuid="urn:uuid:5b0e2a5c-7f0c-4b7e-9a5e-3f1d2c4b5a69" '
        f'sizeX="{glass_nm[0]}" sizeY="{glass_nm[1]}"><barcode>{barcode}</barcode>'
        f'<image name="macro" uuid="urn:uuid:1f7e2d8a-3c4b-4a59-8e6f-0a1b2c3d4e5f">'
        f"<creationDate>{DATE_ISO}.00Z</creationDate>{device}"
        f'<pixels sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}">'
        f'<dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" r="0" ifd="0"/></pixels>'
        f'<view sizeX="{glass_nm[0]}" sizeY="{glass_nm[1]}" offsetX="0" offsetY="0"/>'
        "<scanSettings><objectiveSettings><objective>1.25</objective></objectiveSettings>"
        "</scanSettings></image>"
        f'<image name="{CASE} {NAME}" uuid="urn:uuid:2a8f3e9b-4d5c-4b6a-9f70-1b2c3d4e5f60">'
        f"<creationDate>{DATE_ISO}.00Z</creationDate>{device}"
        f'<pixels sizeX="{width}" sizeY="{height}">{dims}</pixels>'
        f'<view sizeX="{view[0]}" sizeY="{view[1]}" offsetX="6000000" offsetY="30000000" '
        'spacingZ="0"/>'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>"
        "<illuminationSettings><numericalAperture>0.4</numericalAperture>"
        "<illuminationSource>brightfield</illuminationSource></illuminationSettings>"
        "</scanSettings></image></collection></scn>"
    )


def write_scn_slide(
    path: Path, size: Size = (HEIGHT, WIDTH), macro_size: Size = (512, 256)
) -> Path:
    """The macro first (as SCN400 files put it), then the main image's levels."""
    levels, macro = pyramid(*size), glass(*macro_size)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(macro, description=scn_xml(levels, macro), metadata=None, **_tiled())
        for level in levels:
            writer.write(level, metadata=None, software=False, **_tiled())
    return path


def bif_xmp_iscan() -> str:
    return (
        "<iScan "
        f'BarCode1D="{BARCODE}" ScanRes="{MPP}" Magnification="20" ScannerModel="VENTANA DP 200" '
        f'UnitNumber="{SERIAL}" ScanDate="{DATE_ISO}" SlideAnnotation="{CASE} {NAME}" '
        f'UserName="{COMPUTER}" Source="{PATH}" BuildVersion="1.1.0.15854"/>'
    )


def bif_xmp_initial() -> bytes:
    """The first page's XMP: the ``iScan`` element (scan settings, barcode, dates, user)."""
    return f'<?xml version="1.0" encoding="utf-8"?><Metadata>{bif_xmp_iscan()}</Metadata>'.encode()


def bif_tile_number(col: int, row: int, across: int, down: int) -> int:
    """A tile's number in ``TileJointInfo``: 1-based, rows counted from the bottom, every
    second row (from the bottom) numbered right to left."""
    from_bottom = down - 1 - row
    column = col if from_bottom % 2 == 0 else across - 1 - col
    return from_bottom * across + column + 1


def bif_xmp_encode(height: int, width: int) -> bytes:
    """Level 0's XMP: ``EncodeInfo`` with one scanned area, tiles joined without overlap."""
    across, down = -(-width // TILE), -(-height // TILE)
    joints = []
    for row in range(down):
        for col in range(across):
            number = bif_tile_number(col, row, across, down)
            if col + 1 < across:
                joints.append(("RIGHT", number, bif_tile_number(col + 1, row, across, down)))
            if row > 0:  # UP: from this tile to the one above it
                joints.append(("UP", number, bif_tile_number(col, row - 1, across, down)))
    joint_xml = "".join(
        f'<TileJointInfo FlagJoined="1" Confidence="95" Direction="{d}" Tile1="{a}" '
        f'Tile2="{b}" OverlapX="0" OverlapY="0"/>'
        for d, a, b in joints
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><EncodeInfo Ver="2"><SlideStitchInfo>'
        f'<ImageInfo AOIScanned="1" Width="{TILE}" Height="{TILE}" NumRows="{down}" '
        f'NumCols="{across}" Pos-X="0" Pos-Y="0">{joint_xml}</ImageInfo></SlideStitchInfo>'
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin></EncodeInfo>'
    ).encode()


def write_bif_slide(path: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    """Label first (with the iScan XMP, where readers look for it), thumbnail, then the levels;
    level 0 carries the EncodeInfo XMP (scan area and tile joints)."""
    software = "ScanOutputManager 1.1.0.15854"
    iscan: Any = [(700, "B", 0, bif_xmp_initial(), True)]
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            glass(96, 288), description="Label_Image", software=software, metadata=None,
            extratags=iscan, photometric="rgb",
        )  # fmt: skip
        writer.write(
            glass(64, 192, 180), description="Thumbnail", software=software, metadata=None,
            photometric="rgb",
        )  # fmt: skip
        for r, level in enumerate(pyramid(*size)):
            tags: Any = [(700, "B", 0, bif_xmp_encode(*size), True)] if r == 0 else []
            writer.write(
                level, description=f"level={r} mag={20 // 4**r} quality=95", software=software,
                metadata=None, extratags=tags, subfiletype=1 if r else 0, **_tiled(),
            )  # fmt: skip
    return path


def philips_xml(levels: list[Pixels]) -> str:
    def attribute(name: str, value: str, kind: str = "IString") -> str:
        return f'<Attribute Name="{name}" Group="0x0000" Element="0x0000" PMSVR="{kind}">{value}</Attribute>'

    spacing = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        + attribute("DICOM_PIXEL_SPACING", f'"{MPP / 1000 * 4**r:.9f}" "{MPP / 1000 * 4**r:.9f}"', "IDoubleArray")
        + attribute("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", str(r), "IUInt32")
        + "</DataObject>"
        for r in range(len(levels))
    )  # fmt: skip
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        + attribute("DICOM_MANUFACTURER", "PHILIPS")
        + attribute("DICOM_ACQUISITION_DATETIME", "20240314092653.000000")
        + attribute("DICOM_DEVICE_SERIAL_NUMBER", SERIAL)
        + attribute("PIM_DP_UFS_BARCODE", base64.b64encode(BARCODE.encode()).decode())
        + attribute("PIM_DP_SOURCE_FILE", PATH)
        + attribute("DICOM_PATIENT_NAME", NAME)
        + '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" '
        'PMSVR="IDataObjectArray"><Array><DataObject ObjectType="DPScannedImage">'
        + attribute("PIM_DP_IMAGE_TYPE", "WSI")
        + '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" '
        f'Element="0x8B01" PMSVR="IDataObjectArray"><Array>{spacing}</Array></Attribute>'
        "</DataObject></Array></Attribute></DataObject>"
    )


def write_philips_slide(path: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    levels = pyramid(*size)
    software = "Philips DP v1.0"
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            levels[0], description=philips_xml(levels), software=software, metadata=None,
            **_tiled(),
        )  # fmt: skip
        writer.write(levels[1], software=software, metadata=None, subfiletype=1, **_tiled())
        for name in ("Macro", "Label"):
            writer.write(
                glass(96, 288), description=f"{name}\n{NAME} {CASE}", software=software,
                metadata=None, photometric="rgb", compression="jpeg",
            )  # fmt: skip
    return path


def qpi_xml(kind: str, name: str = "RGB") -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>'
        "<DescriptionVersion>2</DescriptionVersion>"
        "<AcquisitionSoftware>PerkinElmer-QPI</AcquisitionSoftware>"
        f"<ImageType>{kind}</ImageType><Identifier>{CASE}_{NAME}</Identifier>"
        f"<SlideID>{CASE}</SlideID><Barcode>{BARCODE}</Barcode>"
        f"<ComputerName>{COMPUTER}</ComputerName><IsUnmixedComponent>False</IsUnmixedComponent>"
        f"<Name>{name}</Name><Color>255,255,255</Color><Objective>20x</Objective>"
        f"<ScanProfile>{PATH}\\profile.xml</ScanProfile>"
        f"<ValidationCode>{DATE_ISO}</ValidationCode></PerkinElmer-QPI-ImageDescription>"
    )


def write_qptiff_slide(path: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    """A brightfield QPTIFF: one RGB page per level, as Akoya's Vectra Polaris writes H&E."""
    levels = pyramid(*size, factor=2)
    resolution: dict[str, Any] = {"resolutionunit": "CENTIMETER"}
    software = "PerkinElmer-QPI"

    def write(image: Pixels, kind: str, step: int, tiled: bool = True) -> None:
        per_cm = 1e4 / (MPP * step)
        layout = _tiled() if tiled else {"photometric": "rgb", "compression": "jpeg"}
        writer.write(
            image, description=qpi_xml(kind), software=software, metadata=None,
            resolution=(per_cm, per_cm), **resolution, **layout,
        )  # fmt: skip

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        write(levels[0], "FullResolution", 1)
        write(glass(64, 96, 230), "Thumbnail", 8, tiled=False)
        write(levels[1], "ReducedResolution", 2)
        write(glass(96, 288), "Overview", 32, tiled=False)
        write(glass(96, 96, 240), "Label", 32, tiled=False)
    return path


def write_multiplexed_qptiff(
    path: Path, channels: tuple[str, ...] = ("DAPI", "CD8", "PanCK"), size: Size = (HEIGHT, WIDTH)
) -> Path:
    """A multiplexed QPTIFF: one greyscale page per channel at each level."""
    full = slide_pixels(*size)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for kind, step in (("FullResolution", 1), ("ReducedResolution", 2)):
            for index, name in enumerate(channels):
                plane = np.ascontiguousarray(full[::step, ::step, index % 3])
                writer.write(
                    plane, description=qpi_xml(kind, name), software="PerkinElmer-QPI",
                    metadata=None, tile=(TILE, TILE), compression="zstd",
                    resolution=(1e4 / (MPP * step), 1e4 / (MPP * step)), resolutionunit="CENTIMETER",
                )  # fmt: skip
    return path


VENDOR_WRITERS: dict[str, Callable[[Path, Size], Path]] = {
    "hamamatsu": write_ndpi_slide,
    "leica": write_scn_slide,
    "ventana": write_bif_slide,
    "philips": write_philips_slide,
    "akoya": write_qptiff_slide,
}
SUFFIXES = {
    "hamamatsu": ".ndpi",
    "leica": ".scn",
    "ventana": ".bif",
    "philips": ".tiff",
    "akoya": ".qptiff",
}
OBJECTIVES = {"hamamatsu": 20.0, "leica": 20.0, "ventana": 20.0, "philips": None, "akoya": 20.0}


def write_vendor_slide(vendor: str, folder: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    """Write the ``vendor`` slide into ``folder``, named after the case and patient as labs
    name their files (the name is an identifier too), with the scanner's extension."""
    return VENDOR_WRITERS[vendor](folder / f"{CASE}_DOE_JOHN{SUFFIXES[vendor]}", size)


MRXS_TILE = 256
MRXS_SLIDE_ID = "7d3c1f0e9a8b4c2d8e6f5a4b3c2d1e0f"


def _jpeg(rgb: Pixels) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    assert ok
    return encoded.tobytes()


def write_mrxs_slide(path: Path, size: Size = (HEIGHT, WIDTH)) -> Path:
    """A minimal 3DHISTECH MIRAX slide as OpenSlide's format description lays it out: ``path``
    (``.mrxs``) and a folder beside it with ``Slidedat.ini``, ``Index.dat`` and ``Data0000.dat``.

    Level 0 is 3 x 2 camera images of 256 px without overlap (no position buffer, so positions
    follow from the image size), level 1 the 2 x 2 concatenation of level 0 halved; a macro and a
    label image in the non-hierarchical "Scan data layer"; the slide name in ``[GENERAL]``.
    """
    full = slide_pixels(*size)
    across, down = -(-size[1] // MRXS_TILE), -(-size[0] // MRXS_TILE)
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray()
    levels: list[list[tuple[int, int, int]]] = [[], []]  # (image index, offset, length)

    def store(image: bytes) -> tuple[int, int]:
        offset = len(data)
        data.extend(image)
        return offset, len(image)

    for y in range(down):
        for x in range(across):
            tile = np.full((MRXS_TILE, MRXS_TILE, 3), 255, np.uint8)
            part = full[y * MRXS_TILE : (y + 1) * MRXS_TILE, x * MRXS_TILE : (x + 1) * MRXS_TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            levels[0].append((y * across + x, *store(_jpeg(tile))))
    for y in range(0, down, 2):
        for x in range(0, across, 2):
            block = np.full((2 * MRXS_TILE, 2 * MRXS_TILE, 3), 255, np.uint8)
            part = full[y * MRXS_TILE : (y + 2) * MRXS_TILE, x * MRXS_TILE : (x + 2) * MRXS_TILE]
            block[: part.shape[0], : part.shape[1]] = part
            levels[1].append((y * across + x, *store(_jpeg(block[::2, ::2]))))
    macro, label = store(_jpeg(glass(96, 288))), store(_jpeg(glass(96, 96, 240)))
    (folder / "Data0000.dat").write_bytes(bytes(data))
    _write_mrxs_index(folder / "Index.dat", levels, [macro, label])
    (folder / "Slidedat.ini").write_text(_slidedat(across, down), encoding="utf-8")
    path.write_bytes(b"")  # the .mrxs itself is a marker; everything is in the folder
    return path


def _write_mrxs_index(
    path: Path, levels: list[list[tuple[int, int, int]]], nonhier: list[tuple[int, int]]
) -> None:
    """Index.dat: version, slide id, the two root pointers, then the record tables and pages."""
    head = b"01.02" + MRXS_SLIDE_ID.encode()
    words: list[int] = []  # int32 words after the head and the two root pointers
    base = len(head) + 8

    def at(word: int) -> int:
        return base + 4 * word

    hier_table = len(words)
    words += [0] * len(levels)
    nonhier_table = len(words)
    words += [0] * len(nonhier)
    for number, entries in enumerate(levels):
        words[hier_table + number] = at(len(words))
        words += [0, at(len(words) + 2)]  # list head: 0, the first page
        words += [len(entries), 0]  # page: item count, no next page
        for index, offset, length in entries:
            words += [index, offset, length, 0]
    for number, (offset, length) in enumerate(nonhier):
        words[nonhier_table + number] = at(len(words))
        words += [0, at(len(words) + 2)]
        words += [1, 0, 0, 0, offset, length, 0]
    roots = struct.pack("<ii", at(hier_table), at(nonhier_table))
    path.write_bytes(head + roots + struct.pack(f"<{len(words)}i", *words))


def _slidedat(across: int, down: int) -> str:
    level = (
        "OVERLAP_X=0\nOVERLAP_Y=0\nMICROMETER_PER_PIXEL_X={mpp}\nMICROMETER_PER_PIXEL_Y={mpp}\n"
        "IMAGE_FORMAT=JPEG\nIMAGE_FILL_COLOR_BGR=16777215\nDIGITIZER_WIDTH=256\n"
        "DIGITIZER_HEIGHT=256\nIMAGE_CONCAT_FACTOR={concat}\n"
    )
    return (
        f"[GENERAL]\nSLIDE_VERSION=01.03\nSLIDE_ID={MRXS_SLIDE_ID}\nSLIDE_NAME={CASE} {NAME}\n"
        f"SLIDE_CREATIONDATETIME={DATE_ISO}\nIMAGENUMBER_X={across}\nIMAGENUMBER_Y={down}\n"
        "OBJECTIVE_MAGNIFICATION=20\nCameraImageDivisionsPerSide=1\n\n"
        "[HIERARCHICAL]\nHIER_COUNT=1\nHIER_0_NAME=Slide zoom level\nHIER_0_COUNT=2\n"
        "HIER_0_VAL_0=ZoomLevel_0\nHIER_0_VAL_0_SECTION=LAYER_0_LEVEL_0_SECTION\n"
        "HIER_0_VAL_1=ZoomLevel_1\nHIER_0_VAL_1_SECTION=LAYER_0_LEVEL_1_SECTION\n"
        "NONHIER_COUNT=1\nNONHIER_0_NAME=Scan data layer\nNONHIER_0_COUNT=2\n"
        "NONHIER_0_VAL_0=ScanDataLayer_SlideThumbnail\n"
        "NONHIER_0_VAL_0_SECTION=NONHIERLAYER_0_VAL_0_SECTION\n"
        "NONHIER_0_VAL_1=ScanDataLayer_SlideBarcode\n"
        "NONHIER_0_VAL_1_SECTION=NONHIERLAYER_0_VAL_1_SECTION\nINDEXFILE=Index.dat\n\n"
        "[DATAFILE]\nFILE_COUNT=1\nFILE_0=Data0000.dat\n\n"
        f"[LAYER_0_LEVEL_0_SECTION]\n{level.format(mpp=MPP, concat=0)}\n"
        f"[LAYER_0_LEVEL_1_SECTION]\n{level.format(mpp=MPP * 2, concat=1)}\n"
        "[NONHIERLAYER_0_VAL_0_SECTION]\nTHUMBNAIL_IMAGE_TYPE=JPEG\n\n"
        f"[NONHIERLAYER_0_VAL_1_SECTION]\nBARCODE_IMAGE_TYPE=JPEG\nBARCODE_VALUE={BARCODE}\n"
    )

"""Small generated whole-slide TIFFs for the WSI tests (and the benchmark's large slide).

Pixels are drawn tile by tile from global coordinates (smooth stain fields, "nuclei", noise), so
a slide of any size is written without ever holding it in memory and every tile agrees with its
neighbours. Layouts: Aperio SVS (JPEG with RGB colour space like Aperio's, or Aperio JPEG 2000),
generic pyramidal TIFF or BigTIFF with SubIFD levels, and OME-TIFF; codecs JPEG, JPEG 2000,
zstd or none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from numpy.typing import NDArray

Kind = Literal["svs", "tiff", "ome"]
Codec = Literal["jpeg", "jpeg2000", "zstd", "none"]
Pixels = NDArray[np.uint8]

BACKGROUND = np.array([242, 240, 241], np.float32)
EOSIN = np.array([226, 150, 190], np.float32)
HEMATOXYLIN = np.array([110, 70, 150], np.float32)
# Identifiers a scanner writes into the description: none of them may reach a pyramid.
PHI_FIELDS = {
    "ScanScope ID": "SS9876",
    "Filename": "DOE-JOHN-1984-S1",
    "Date": "03/14/24",
    "Time": "09:26:53",
    "User": "5b0e2a5c-7f0c-4b7e-9a5e-3f1d2c4b5a69",
}


def tile_pixels(
    top: int, left: int, height: int, width: int, seed: int = 0, step: int = 1
) -> Pixels:
    """The slide's pixels ``[top:top+height, left:left+width]`` (every ``step``-th pixel of the
    full-resolution slide from there: reduced levels), as (y, x, RGB) uint8.

    Separable stain fields keep it cheap: a 20k x 17k slide is drawn in seconds.
    """
    y = (top + step * np.arange(height, dtype=np.float32))[:, None]
    x = (left + step * np.arange(width, dtype=np.float32))[None, :]
    phase = seed * 0.7
    tissue = 0.5 + 0.5 * np.sin(x / 1100.0 + phase) * np.cos(y / 900.0 - phase)
    tissue = np.clip((tissue - 0.35) * 3.0, 0.0, 1.0)
    nuclei = np.clip(np.sin(x / 7.3 + phase) * np.sin(y / 6.1), 0.0, 1.0) ** 4
    rgb = BACKGROUND + (tissue[..., None] * (EOSIN - BACKGROUND))
    rgb += (tissue * nuclei)[..., None] * (HEMATOXYLIN - EOSIN)
    rng = np.random.default_rng((seed, top, left, step))
    rgb += rng.integers(-8, 9, size=rgb.shape, dtype=np.int8)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def slide_pixels(height: int, width: int, seed: int = 0, tile: int = 256) -> Pixels:
    """A whole (small) slide, assembled from the same tiles the writer uses."""
    image = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            h, w = min(tile, height - top), min(tile, width - left)
            image[top : top + h, left : left + w] = tile_pixels(top, left, h, w, seed)
    return image


def _tiles(height: int, width: int, tile: int, seed: int, factor: int) -> Iterator[Pixels]:
    """Full-size tiles (edge tiles padded) of the slide point-sampled every ``factor`` pixels."""
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            h, w = min(tile, height - top), min(tile, width - left)
            padded = np.zeros((tile, tile, 3), np.uint8)
            padded[:h, :w] = tile_pixels(top * factor, left * factor, h, w, seed, factor)
            yield padded


def _compression(codec: Codec, kind: Kind) -> tuple[Any, dict[str, Any]]:
    if codec == "jpeg":
        # RGB colour space without JFIF, as Aperio writes it (tifffile's default is YCbCr).
        args: dict[str, Any] = {"level": 80}
        return "jpeg", {**args, "outcolorspace": "RGB"} if kind == "svs" else args
    if codec == "jpeg2000":
        return (33005 if kind == "svs" else "jpeg2000"), {}
    if codec == "zstd":
        return "zstd", {"level": 3}
    return None, {}


def aperio_description(width: int, height: int, mpp: float, power: float = 40.0) -> str:
    """An Aperio ImageDescription with the usual optical fields and the identifying ones."""
    fields = {"AppMag": f"{power:g}", "StripeWidth": "2040", **PHI_FIELDS, "MPP": f"{mpp:.4f}"}
    text = "|".join(f"{key} = {value}" for key, value in fields.items())
    return f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=80|{text}"


def write_slide(
    path: Path,
    height: int,
    width: int,
    *,
    kind: Kind = "tiff",
    codec: Codec = "jpeg",
    tile: int = 256,
    levels: int = 3,
    bigtiff: bool = False,
    mpp: float = 0.25,
    seed: int = 0,
    maxworkers: int = 1,
) -> Path:
    """Write a tiled multi-level slide; its own lower levels are 4x point-sampled reductions."""
    compression, args = _compression(codec, kind)
    common: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": compression,
        "compressionargs": args,
        "maxworkers": maxworkers,
    }
    shapes = [(-(-height // 4**k), -(-width // 4**k)) for k in range(levels)]
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=kind == "ome") as writer:
        if kind == "svs":
            common["metadata"] = None  # no tifffile "shaped" JSON: it would hide the SVS layout
            _write_svs(writer, shapes, common, tile, seed, mpp)
        else:
            _write_subifd_pyramid(writer, shapes, common, tile, seed, mpp, kind)
    return path


def _write_svs(
    writer: tifffile.TiffWriter,
    shapes: list[tuple[int, int]],
    common: dict[str, Any],
    tile: int,
    seed: int,
    mpp: float,
) -> None:
    """Baseline, thumbnail (stripped), reduced levels as plain pages, then label and macro."""
    (height, width), description = shapes[0], aperio_description(shapes[0][1], shapes[0][0], mpp)
    writer.write(
        _tiles(height, width, tile, seed, 1),
        shape=(height, width, 3),
        description=description,
        **common,
    )
    thumb = (
        slide_pixels(*shapes[-1], seed=seed)[::2, ::2]
        if len(shapes) > 1
        else np.zeros((8, 8, 3), np.uint8)
    )
    writer.write(
        thumb,
        photometric="rgb",
        description="Aperio Image Library v12.0.15 \r\nthumbnail",
        metadata=None,
    )
    for k, (h, w) in enumerate(shapes[1:], start=1):
        writer.write(
            _tiles(h, w, tile, seed, 4**k), shape=(h, w, 3), description="Aperio level", **common
        )
    label = np.full((96, 80, 3), 255, np.uint8)
    writer.write(label, photometric="rgb", subfiletype=1, description="label 80x96", metadata=None)
    writer.write(label, photometric="rgb", subfiletype=9, description="macro 80x96", metadata=None)


def _write_subifd_pyramid(
    writer: tifffile.TiffWriter,
    shapes: list[tuple[int, int]],
    common: dict[str, Any],
    tile: int,
    seed: int,
    mpp: float,
    kind: Kind,
) -> None:
    """Full resolution with SubIFD levels; resolution tags (TIFF) or OME PhysicalSize (OME)."""
    height, width = shapes[0]
    extra: dict[str, Any] = {"subifds": len(shapes) - 1}
    if kind == "ome":
        extra["metadata"] = {
            "axes": "YXS",
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }
    else:
        extra["resolution"] = (1e4 / mpp, 1e4 / mpp)
        extra["resolutionunit"] = "CENTIMETER"
        extra["metadata"] = None
    writer.write(_tiles(height, width, tile, seed, 1), shape=(height, width, 3), **common, **extra)
    for k, (h, w) in enumerate(shapes[1:], start=1):
        writer.write(
            _tiles(h, w, tile, seed, 4**k),
            shape=(h, w, 3),
            subfiletype=1,
            **common,
            metadata=None if kind != "ome" else {},
        )


# DICOM whole-slide images: a VL Whole Slide Microscopy series written with pydicom.
DicomCodec = Literal["jpeg", "jpeg-ybr", "jpeg2000", "jpegls", "none"]
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
DICOM_TRANSFER_SYNTAXES: dict[str, str] = {
    "jpeg": "1.2.840.10008.1.2.4.50",
    "jpeg-ybr": "1.2.840.10008.1.2.4.50",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "none": "1.2.840.10008.1.2.1",
}
DICOM_PATIENT = {
    "PatientName": "DOE^JOHN",
    "PatientID": "MRN-4455-DICOM",
    "AccessionNumber": "S24-1984",
}


def write_dicom_wsi(
    folder: Path,
    height: int,
    width: int,
    *,
    codec: DicomCodec = "jpeg",
    tile: int = 128,
    levels: int = 2,
    sparse: bool = False,
    parts: int = 1,
    skip_tiles: tuple[int, ...] = (),
    associated: tuple[str, ...] = ("LABEL", "OVERVIEW"),
    mpp: float = 0.25,
    seed: int = 0,
    thumbnail_text: str = "",
) -> list[Path]:
    """Write a slide as DICOM WSI instances in ``folder``: one per level (level 0 split into
    ``parts`` concatenation parts), each level 2x smaller, plus the ``associated`` images.

    ``associated`` may name LABEL, OVERVIEW (a white card with a dark bar) and THUMBNAIL (the
    slide reduced, with ``thumbnail_text`` written across it when given).
    ``sparse`` writes TILED_SPARSE frames with their positions; ``skip_tiles`` leaves those
    level-0 tiles out (sparse: absent tiles; full: a frame missing, so the level is incomplete).
    """
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uids = {
        "study": str(generate_uid()),
        "series": str(generate_uid()),
        "frame": str(generate_uid()),
    }
    paths = []
    for level in range(levels):
        factor = 2**level
        shape = (-(-height // factor), -(-width // factor))
        tiles = list(_dicom_tiles(shape, tile, seed, factor))
        if level == 0:
            tiles = [t for t in tiles if t[0] not in skip_tiles]
        count = parts if level == 0 else 1
        concatenation = str(generate_uid()) if count > 1 else ""
        cuts = [len(tiles) * k // count for k in range(count + 1)]
        for number in range(count):
            chosen = tiles[cuts[number] : cuts[number + 1]]
            ds = _wsi_dataset(uids, "VOLUME", shape, tile, codec, mpp * factor, height * mpp)
            ds.NumberOfFrames = len(chosen)
            ds.DimensionOrganizationType = "TILED_SPARSE" if sparse else "TILED_FULL"
            if sparse:
                ds.PerFrameFunctionalGroupsSequence = [
                    _frame_position(top, left) for _, top, left, _ in chosen
                ]
            if concatenation:
                ds.ConcatenationUID = concatenation
                ds.InConcatenationNumber = number + 1
                ds.InConcatenationTotalNumber = count
                ds.ConcatenationFrameOffsetNumber = cuts[number]
                ds.SOPInstanceUIDOfConcatenationSource = generate_uid()
            _set_frames(ds, [pixels for *_, pixels in chosen], codec)
            path = folder / f"level{level}-{number}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
    for flavour in associated:
        image = _associated_image(flavour, height, width, seed, thumbnail_text)
        ds = _wsi_dataset(uids, flavour, image.shape[:2], 0, codec, None, None)
        ds.NumberOfFrames = 1
        ds.DimensionOrganizationType = "TILED_FULL"
        _set_frames(ds, [image], codec)
        path = folder / f"{flavour.lower()}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _associated_image(
    flavour: str, height: int, width: int, seed: int, thumbnail_text: str
) -> Pixels:
    if flavour != "THUMBNAIL":
        image = np.full((96, 160, 3), 250, np.uint8)
        image[30:60, 20:140] = 20  # a dark bar where a label prints its barcode and name
        return image
    import cv2

    step = max(1, -(-max(height, width) // 320))
    image = np.ascontiguousarray(
        tile_pixels(0, 0, -(-height // step), -(-width // step), seed, step)
    )
    if thumbnail_text:
        cv2.putText(
            image,
            thumbnail_text,
            (8, image.shape[0] // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.9,
            (0, 0, 0),
            2,
        )
    return image


def dicom_wsi_pixels(height: int, width: int, tile: int = 128, seed: int = 0) -> Pixels:
    """Level 0 of ``write_dicom_wsi``'s slide as written by a lossless codec."""
    return slide_pixels(height, width, seed=seed, tile=tile)


def _dicom_tiles(
    shape: tuple[int, int], tile: int, seed: int, factor: int
) -> Iterator[tuple[int, int, int, Pixels]]:
    """(index, top, left, padded tile) of one level, row by row."""
    height, width = shape
    index = 0
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            h, w = min(tile, height - top), min(tile, width - left)
            padded = np.zeros((tile, tile, 3), np.uint8)
            if factor == 1:
                padded[:h, :w] = tile_pixels(top, left, h, w, seed)
            else:
                padded[:h, :w] = tile_pixels(top * factor, left * factor, h, w, seed, factor)
            yield index, top, left, padded
            index += 1


def _wsi_dataset(
    uids: dict[str, str],
    flavour: str,
    shape: tuple[int, int],
    tile: int,
    codec: DicomCodec,
    mpp: float | None,
    height_um: float | None,
) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(DICOM_TRANSFER_SYNTAXES[codec])
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "SM"
    ds.Manufacturer = "mira test scanner"
    ds.StudyDate, ds.ContentDate = "20240314", "20240314"
    ds.ContainerIdentifier = DICOM_PATIENT["AccessionNumber"]
    for keyword, value in DICOM_PATIENT.items():
        setattr(ds, keyword, value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavour, "NONE"]
    ds.BurnedInAnnotation = "YES" if flavour in ("LABEL", "OVERVIEW") else "NO"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422" if codec == "jpeg-ybr" else "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = shape
    ds.Rows, ds.Columns = (tile, tile) if tile else shape
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.SpecimenLabelInImage = "YES" if flavour in ("LABEL", "OVERVIEW") else "NO"
    if mpp is not None and height_um is not None:
        spacing = mpp / 1000.0
        ds.ImagedVolumeWidth = shape[1] * spacing
        ds.ImagedVolumeHeight = shape[0] * spacing
        measures = Dataset()
        measures.PixelSpacing = [spacing, spacing]
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def _frame_position(top: int, left: int) -> Any:
    from pydicom.dataset import Dataset

    plane = Dataset()
    plane.RowPositionInTotalImagePixelMatrix = top + 1
    plane.ColumnPositionInTotalImagePixelMatrix = left + 1
    plane.XOffsetInSlideCoordinateSystem = 0.0
    plane.YOffsetInSlideCoordinateSystem = 0.0
    plane.ZOffsetInSlideCoordinateSystem = 0.0
    item = Dataset()
    item.PlanePositionSlideSequence = [plane]
    return item


def _set_frames(ds: Any, frames: list[Pixels], codec: DicomCodec) -> None:
    """Pixel Data: frames concatenated (uncompressed) or encapsulated, one fragment each."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    if codec == "none":
        ds.PixelData = b"".join(frame.tobytes() for frame in frames)
        return
    encoded: list[bytes | bytearray] = []
    for frame in frames:
        if codec == "jpeg":  # components stored as R, G, B (no colour transform)
            encoded.append(imagecodecs.jpeg8_encode(frame, level=90, outcolorspace="RGB"))
        elif codec == "jpeg-ybr":
            encoded.append(imagecodecs.jpeg8_encode(frame, level=90, subsampling="422"))
        elif codec == "jpeg2000":
            encoded.append(imagecodecs.jpeg2k_encode(frame, level=0, codecformat="J2K"))
        else:
            encoded.append(imagecodecs.jpegls_encode(frame, level=0))
    ds.PixelData = encapsulate([bytes(frame) for frame in encoded], has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True

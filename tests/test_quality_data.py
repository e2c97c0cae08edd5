"""Test data of the quality stage: catalog batches built from pydicom's real files, degraded
versions of them, and a generated tissue-like slide (no test functions here)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pydicom
import tifffile
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from scipy import ndimage

from storage import Store
from tasks.dataset import catalog

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ORIGINALS = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "examples_rgb_color.dcm")
CMU_SLIDE = Path(__file__).parent / "fixtures" / "cmu_small_region.svs"
BLUR_SIGMA = 2.5  # pixels, at native resolution
SQUEEZE = 0.01  # low contrast: deviations from the mean kept at 1%
TINY_FACTOR = 8  # downsampled by 8 in each direction

Pixels = NDArray[Any]


def bundled(name: str) -> Dataset:
    """One of pydicom's bundled test files (never downloaded)."""
    return pydicom.dcmread(TEST_FILES / name)


def _spatial(pixels: Pixels, sigma: float) -> Pixels:
    sigmas = (sigma, sigma, 0) if pixels.ndim == 3 else sigma
    return ndimage.gaussian_filter(pixels.astype(np.float64), sigmas)


def blurred(pixels: Pixels) -> Pixels:
    return _spatial(pixels, BLUR_SIGMA)


def low_contrast(pixels: Pixels) -> Pixels:
    mean = pixels.astype(np.float64).mean()
    return mean + (pixels.astype(np.float64) - mean) * SQUEEZE


def constant(pixels: Pixels) -> Pixels:
    return np.full(pixels.shape, float(np.median(pixels)))


def tiny(pixels: Pixels) -> Pixels:
    height = pixels.shape[0] // TINY_FACTOR * TINY_FACTOR
    width = pixels.shape[1] // TINY_FACTOR * TINY_FACTOR
    shape = (height // TINY_FACTOR, TINY_FACTOR, width // TINY_FACTOR, TINY_FACTOR)
    return (
        pixels[:height, :width].astype(np.float64).reshape(*shape, *pixels.shape[2:]).mean((1, 3))
    )


DEGRADATIONS: dict[str, tuple[Callable[[Pixels], Pixels], str]] = {
    "blurred": (blurred, "blur"),
    "low-contrast": (low_contrast, "contrast"),
    "constant": (constant, "empty"),
    "tiny": (tiny, "resolution"),
}


def degraded(name: str, change: Callable[[Pixels], Pixels]) -> bytes:
    """The bundled file with its pixels replaced by ``change(pixels)`` (uncompressed)."""
    ds = bundled(name)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[len(pixels) // 2]
    info = np.iinfo(pixels.dtype)
    new = np.clip(np.round(change(pixels)), info.min, info.max).astype(pixels.dtype)
    photometric = "RGB" if new.ndim == 3 else str(ds.PhotometricInterpretation)
    ds.set_pixel_data(new, photometric, int(ds.BitsStored))
    ds.pop("NumberOfFrames", None)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def instance_row(batch: str, key: str, ds: Dataset, index: int, **changes: Any) -> dict[str, Any]:
    """A de-identified catalog row for ``ds`` (pseudonymous IDs made up per index)."""
    spacing = ds.get("PixelSpacing")
    row = {
        "batch": batch,
        "key": key,
        "bytes": 1000 + index,
        "sha256": f"{index:064x}",
        "patient_id": "a1b2c3d4e5f60718",
        "study_uid": "2.25.1001",
        "series_uid": f"2.25.2001.{index // 3}",
        "sop_instance_uid": f"2.25.3001.{index}",
        "sop_class_uid": str(ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")),
        "modality": str(ds.get("Modality", "OT")),
        "body_part": "CHEST",
        "manufacturer": "ACME Imaging",
        "model": "Model 7",
        "study_date": "20190312",
        "pixel_spacing_row": float(spacing[0]) if spacing else None,
        "pixel_spacing_col": float(spacing[1]) if spacing else None,
        "slice_thickness": 1.25,
        "slice_position": 2.5 * (index % 3),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "patient_identity_removed": "YES",
        "pixels_scrubbed": False,
        "deid_profile": "basic",
        "mira_version": "0.1.0",
    }
    row.update(changes)
    return row


def write_dicom_batch(
    store: Store,
    batch: str,
    files: Sequence[tuple[str, bytes]],
    changes: dict[int, dict[str, Any]] | None = None,
) -> list[str]:
    """Publish ``(name, bytes)`` objects and their catalog part; returns the keys."""
    rows, keys = [], []
    for index, (name, data) in enumerate(files):
        key = f"dicom/{batch}/2.25.1001/2.25.2001.{index // 3}/{index}-{name}"
        store.write_bytes(key, data)
        ds = pydicom.dcmread(io.BytesIO(data))
        rows.append(instance_row(batch, key, ds, index, **(changes or {}).get(index, {})))
        keys.append(key)
    catalog.write_part(
        store, "instances", batch, pa.Table.from_pylist(rows, schema=catalog.INSTANCE_SCHEMA)
    )
    return keys


def original_files(names: Sequence[str] = ORIGINALS) -> list[tuple[str, bytes]]:
    return [(name, (TEST_FILES / name).read_bytes()) for name in names]


def tissue_image(size: int = 2048, seed: int = 0) -> NDArray[np.uint8]:
    """An H&E-like field: pink stroma with textured nuclei in blobs on bright glass."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // 8, size // 8)), 10)
    blob = ndimage.zoom(coarse / coarse.std(), 8, order=1)
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    tissue = blob - 2.0 * radius**2 > -1.0
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    texture /= texture.std()
    image = np.empty((size, size, 3), np.float32)
    image[:] = (243, 241, 245)
    stroma = np.stack([228 + 8 * texture, 140 + 18 * texture, 185 + 10 * texture], axis=-1)
    image[tissue] = stroma[tissue]
    nuclei = np.zeros((size, size), np.float32)
    ys, xs = rng.integers(0, size, (2, int(tissue.sum() / 200)))
    inside = tissue[ys, xs]
    nuclei[ys[inside], xs[inside]] = 1.0
    nuclei = ndimage.gaussian_filter(ndimage.grey_dilation(nuclei, size=(5, 5)), 0.8)
    image = image * (1 - nuclei[..., None]) + np.array([95, 60, 150]) * nuclei[..., None]
    image += rng.normal(0, 2, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def blur_rgb(image: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    return np.clip(_spatial(image, sigma), 0, 255).astype(np.uint8)


def pen_marked(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Thick blue and green marker strokes across the slide."""
    drawing = Image.fromarray(image)
    draw = ImageDraw.Draw(drawing)
    size = image.shape[0]
    draw.line([(0.05 * size, 0.9 * size), (0.95 * size, 0.75 * size)], (30, 60, 170), size // 50)
    draw.line([(0.1 * size, 0.15 * size), (0.9 * size, 0.2 * size)], (20, 130, 60), size // 50)
    return np.asarray(drawing)


def pyramid_tiff(image: NDArray[np.uint8], levels: int = 4, mpp: float = 0.5) -> bytes:
    """A tiled pyramidal TIFF (2x per level, JPEG tiles), like a converted slide."""
    buffer = io.BytesIO()
    resolution = (1e4 / mpp, 1e4 / mpp)
    options: dict[str, Any] = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(buffer) as tiff:
        tiff.write(
            image,
            subifds=levels - 1,
            resolution=resolution,
            resolutionunit="CENTIMETER",
            **options,
        )
        for level in range(1, levels):
            factor = 2**level
            reduced = image[
                : image.shape[0] // factor * factor, : image.shape[1] // factor * factor
            ]
            shape = (reduced.shape[0] // factor, factor, reduced.shape[1] // factor, factor, 3)
            small = reduced.reshape(shape).mean((1, 3)).round().astype(np.uint8)
            tiff.write(small, subfiletype=1, **options)
    return buffer.getvalue()


def slide_row(batch: str, key: str, index: int, **changes: Any) -> dict[str, Any]:
    row = {
        "batch": batch,
        "key": key,
        "bytes": 5000 + index,
        "sha256": f"{index + 100:064x}",
        "slide_id": f"5a1de{index:011d}",
        "patient_id": "",
        "width": 2048,
        "height": 2048,
        "levels": 4,
        "mpp": 0.5,
        "magnification": 20.0,
        "vendor": "generated",
        "deid_profile": "basic",
        "mira_version": "0.1.0",
    }
    row.update(changes)
    return row


def write_slide_batch(
    store: Store,
    batch: str,
    slides: Sequence[tuple[str, bytes]],
    changes: dict[int, dict[str, Any]] | None = None,
) -> list[str]:
    """Publish ``(name, tiff bytes)`` slides and their catalog part; returns the keys."""
    rows, keys = [], []
    for index, (name, data) in enumerate(slides):
        key = f"slides/{name}.tiff"
        store.write_bytes(key, data)
        rows.append(slide_row(batch, key, index, **(changes or {}).get(index, {})))
        keys.append(key)
    catalog.write_part(
        store, "slides", batch, pa.Table.from_pylist(rows, schema=catalog.SLIDE_SCHEMA)
    )
    return keys

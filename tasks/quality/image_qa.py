"""Image quality checks of de-identified DICOM instances and slides, spread over Dask.

Each catalog item gets a score per check (blur, contrast, resolution, empty for DICOM;
tissue fraction, out-of-focus tiles, pen marks for slides). A check passes when its score is
on the right side of its configured threshold; items failing a ``fail`` check get a review
thumbnail and go to the review queue. Work is coarse: one Dask task per group of items, each
opening the research store by URL itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mira.errors import TransientStoreError
from storage import Store
from tasks import layout
from tasks.quality.config import CheckConfig, DicomQAConfig, ImageQAConfig, Severity, SlideQAConfig

log = logging.getLogger(__name__)

ItemKind = Literal["instance", "slide"]
FloatImage = NDArray[np.float64]
# Checks whose score must stay at or under the threshold; every other check needs at least it.
AT_MOST = frozenset({"empty", "out_of_focus", "pen_marks"})
MAX_OVERVIEW_PX = 4096  # an overview level larger than this is read with a stride


@dataclass(frozen=True)
class QAItem:
    """One catalog object to judge."""

    key: str
    kind: ItemKind
    modality: str = ""


@dataclass(frozen=True)
class CheckResult:
    """One check of one item, as it goes into the catalog ``quality`` table."""

    check: str
    severity: Severity
    passed: bool
    score: float | None
    threshold: float | None
    detail: str


@dataclass(frozen=True)
class ItemReport:
    """Every check of one item, and the thumbnail written when it needs review."""

    key: str
    kind: ItemKind
    checks: tuple[CheckResult, ...]
    thumbnail_key: str = ""

    @property
    def needs_review(self) -> bool:
        return any(c.severity == "fail" and not c.passed for c in self.checks)

    @property
    def reasons(self) -> str:
        return "; ".join(f"{c.check}: {c.detail}" for c in self.checks if not c.passed)


def judge(name: str, config: CheckConfig, score: float, modality: str = "") -> CheckResult:
    """Compare ``score`` with the check's threshold in the check's direction."""
    threshold = config.threshold_for(modality)
    at_most = name in AT_MOST
    passed = score <= threshold if at_most else score >= threshold
    relation = ("<=" if passed else ">") if at_most else (">=" if passed else "<")
    return CheckResult(
        name,
        config.severity,
        bool(passed),
        score,
        threshold,
        f"{score:.4g} {relation} {threshold:g}",
    )


def thumbnail_key(key: str) -> str:
    """The review thumbnail of ``key``: one flat, safe name per catalog key."""
    return f"{layout.THUMBNAILS}/{re.sub(r'[^A-Za-z0-9._-]', '_', key.replace('/', '__'))}.png"


def luminance(image: NDArray[Any]) -> FloatImage:
    """Grey values of a grey or RGB image, as float64."""
    values = image.astype(np.float64)
    if values.ndim == 3:
        return values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114
    return values


def block_mean(image: NDArray[Any], factor: int) -> NDArray[Any]:
    """Downsample by an integer ``factor`` with area averaging (keeps a trailing channel axis)."""
    if factor <= 1:
        return image
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    height, width = max(height, factor), max(width, factor)
    cropped = image[:height, :width].astype(np.float64)
    shape = (height // factor, factor, width // factor, factor, *image.shape[2:])
    return cropped.reshape(shape).mean(axis=(1, 3))


def window(grey: FloatImage) -> FloatImage:
    """Stretch the 1st-99th percentile to [0, 1] so the metrics ignore brightness and gain."""
    low, high = np.percentile(grey, [1, 99])
    return np.clip((grey - low) / max(float(high - low), 1e-9), 0.0, 1.0)


def sharpness(grey: FloatImage) -> float:
    """Variance of the Laplacian over the mean squared gradient of the windowed image.

    The plain variance of the Laplacian grows with contrast and texture; dividing by the
    gradient energy leaves a measure of how fine the detail is (per pixel squared): a
    Gaussian blur of sigma pixels brings it to roughly 1/sigma^2 or below.
    """
    normal = window(grey)
    grad_y, grad_x = np.gradient(normal)
    energy = float(np.mean(grad_x**2 + grad_y**2))
    if energy <= 0:
        return 0.0
    return float(ndimage.laplace(normal).var() / energy)


def contrast_bits(grey: FloatImage) -> float:
    """log2 of the grey levels the 1st-99th percentile spans: the usable dynamic range."""
    low, high = np.percentile(grey, [1, 99])
    return math.log2(float(high - low) + 1.0)


def near_constant_fraction(grey: FloatImage, tolerance: float = 2.0) -> float:
    """Fraction of pixels within ``tolerance`` grey levels of the median (1.0: constant)."""
    return float(np.mean(np.abs(grey - np.median(grey)) <= tolerance))


def central_crop(image: NDArray[Any], size: int) -> NDArray[Any]:
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def dicom_checks(pixels: NDArray[Any], modality: str, config: DicomQAConfig) -> list[CheckResult]:
    """The DICOM checks of one frame (grey or RGB, stored values)."""
    grey = luminance(pixels)
    if np.issubdtype(pixels.dtype, np.floating):
        # Float pixels carry no grey-level scale: judge them on a 12-bit scale of their range.
        span = float(grey.max() - grey.min())
        grey = (grey - grey.min()) / span * 4095 if span > 0 else grey * 0
    checks = config.checks
    return [
        judge("resolution", checks.resolution, float(min(grey.shape)), modality),
        judge("contrast", checks.contrast, contrast_bits(grey), modality),
        judge("blur", checks.blur, sharpness(central_crop(grey, config.crop_px)), modality),
        judge("empty", checks.empty, near_constant_fraction(grey), modality),
    ]


def hsv(rgb: NDArray[Any]) -> tuple[FloatImage, FloatImage, FloatImage]:
    """Hue (degrees), saturation and value of an RGB image."""
    values = rgb.astype(np.float64) / 255.0
    high, low = values.max(axis=-1), values.min(axis=-1)
    spread = high - low
    safe = np.maximum(spread, 1e-9)
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    hue = np.where(
        high == red,
        ((green - blue) / safe) % 6,
        np.where(high == green, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = np.where(spread == 0, 0.0, hue * 60.0)
    saturation = np.where(high > 0, spread / np.maximum(high, 1e-9), 0.0)
    return hue, saturation, high


def ink_mask(rgb: NDArray[Any]) -> NDArray[np.bool_]:
    """Pixels of marker ink: saturated blue or green hues, or near-black."""
    hue, saturation, value = hsv(rgb)
    blue = (hue >= 190) & (hue <= 250) & (saturation >= 0.4) & (value >= 0.15)
    green = (hue >= 70) & (hue <= 170) & (saturation >= 0.25) & (value >= 0.15)
    return blue | green | (value < 0.15)


def tissue_mask(rgb: NDArray[Any]) -> NDArray[np.bool_]:
    """Pixels that are neither bright unstained glass nor ink."""
    _, saturation, value = hsv(rgb)
    background = (value >= 0.85) & (saturation < 0.1)
    return ~background & ~ink_mask(rgb)


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level: a lazily read array and how its axes are laid out."""

    array: Any
    channels_first: bool

    @property
    def size(self) -> tuple[int, int]:
        shape = self.array.shape
        return (int(shape[-2]), int(shape[-1])) if self.channels_first else (shape[0], shape[1])

    def read(self, top: int, left: int, height: int, width: int, step: int = 1) -> NDArray[Any]:
        """An RGB region (y, x, c) of the level, every ``step``-th pixel."""
        rows, cols = slice(top, top + height, step), slice(left, left + width, step)
        if self.channels_first:
            region = np.moveaxis(np.asarray(self.array[:, rows, cols]), 0, -1)
        else:
            region = np.asarray(self.array[rows, cols])
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=-1)
        return region[..., :3]


def multiscale_paths(attrs: dict[str, Any]) -> list[str]:
    """Array paths of an OME-NGFF multiscale, largest first (0.5 nests them under "ome")."""
    meta = attrs.get("ome", attrs)
    multiscales = meta.get("multiscales") if isinstance(meta, dict) else None
    datasets = multiscales[0].get("datasets", []) if multiscales else []
    return [str(d["path"]) for d in datasets] or ["0"]


@contextlib.contextmanager
def slide_levels(store: Store, key: str) -> Iterator[list[SlideLevel]]:
    """The levels of a slide, largest first: its OME-Zarr pyramid when one exists, else the TIFF."""
    import zarr

    pyramid = layout.pyramid_key(key)
    if store.exists(f"{pyramid}/zarr.json"):
        group = zarr.open_group(store.zarr_store(pyramid, read_only=True), mode="r")
        paths = multiscale_paths(dict(group.attrs))
        yield [SlideLevel(group[path], channels_first=True) for path in paths]
        return
    import tifffile

    with store.open_read(key) as stream, tifffile.TiffFile(stream) as tiff:
        series = tiff.series[0]
        levels = [
            SlideLevel(zarr.open(series.aszarr(level=i), mode="r"), channels_first=False)
            for i in range(len(series.levels))
        ]
        yield levels


def overview(level: SlideLevel, size_px: int) -> NDArray[np.uint8]:
    """The whole level reduced to at most ``size_px`` on its long side."""
    height, width = level.size
    step = max(1, math.ceil(max(height, width) / MAX_OVERVIEW_PX))
    image = level.read(0, 0, height, width, step)
    factor = max(1, math.ceil(max(image.shape[:2]) / size_px))
    return np.asarray(block_mean(image, factor)).round().astype(np.uint8)


def focus_level(levels: list[SlideLevel], target: float) -> tuple[SlideLevel, float]:
    """The level with the largest downsample not above ``target``, and that downsample."""
    full = levels[0].size[1]
    choices = [(full / level.size[1], level) for level in levels]
    downsample, level = max((c for c in choices if c[0] <= target + 1e-6), key=lambda c: c[0])
    return level, downsample


def tissue_tiles(
    tissue: NDArray[np.bool_], level_size: tuple[int, int], config: SlideQAConfig
) -> list[tuple[int, int]]:
    """Top-left corners of the focus-level tiles that are mostly tissue, sampled evenly."""
    scale_y, scale_x = tissue.shape[0] / level_size[0], tissue.shape[1] / level_size[1]
    tile = config.tile_px
    corners = []
    for top in range(0, level_size[0] - tile + 1, tile):
        for left in range(0, level_size[1] - tile + 1, tile):
            y0, x0 = int(top * scale_y), int(left * scale_x)
            y1, x1 = (
                max(y0 + 1, int((top + tile) * scale_y)),
                max(x0 + 1, int((left + tile) * scale_x)),
            )
            if tissue[y0:y1, x0:x1].mean() >= config.min_tile_tissue:
                corners.append((top, left))
    if len(corners) > config.max_tiles:
        picks = np.linspace(0, len(corners) - 1, config.max_tiles).round().astype(int)
        corners = [corners[i] for i in picks]
    return corners


def slide_checks(
    levels: list[SlideLevel], config: SlideQAConfig
) -> tuple[list[CheckResult], NDArray[np.uint8]]:
    """The slide checks, and the overview image they looked at (for the thumbnail)."""
    thumb = overview(levels[-1], config.thumbnail_px)
    tissue = tissue_mask(thumb)
    checks = config.checks
    results = [
        judge("tissue_fraction", checks.tissue_fraction, float(tissue.mean())),
        judge("pen_marks", checks.pen_marks, float(ink_mask(thumb).mean())),
    ]
    level, downsample = focus_level(levels, config.focus_downsample)
    corners = tissue_tiles(tissue, level.size, config)
    tile = config.tile_px
    scores = [sharpness(luminance(level.read(top, left, tile, tile))) for top, left in corners]
    blurred = sum(score < config.tile_sharpness for score in scores)
    focus = judge("out_of_focus", checks.out_of_focus, blurred / len(scores) if scores else 0.0)
    detail = f"{blurred} of {len(scores)} tissue tiles at downsample {downsample:g} blurred"
    results.append(CheckResult(**{**focus.__dict__, "detail": f"{focus.detail} ({detail})"}))
    return results, thumb


def dicom_frame(store: Store, key: str) -> tuple[NDArray[Any] | None, str]:
    """The central frame of an instance (RGB or grey stored values) and its modality.

    None when the object holds no pixel data. Only the central frame is decoded.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    with store.open_read(key) as stream:
        header = pydicom.dcmread(stream, defer_size=1024)
        modality = str(header.get("Modality", "") or "")
        if not any(t in header for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            return None, modality
        frames = int(header.get("NumberOfFrames", 1) or 1)
        stream.seek(0)
        frame = pixel_array(stream, index=frames // 2 if frames > 1 else None)
        if header.get("PhotometricInterpretation") == "PALETTE COLOR":
            frame = apply_color_lut(frame, header)
    return frame, modality


def display_image(pixels: NDArray[Any], size_px: int) -> bytes:
    """A PNG for a person: the windowed image reduced to at most ``size_px``."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.dtype == np.uint8:
        image = Image.fromarray(pixels[..., :3])
    else:
        image = Image.fromarray((window(luminance(pixels)) * 255).round().astype(np.uint8))
    image.thumbnail((size_px, size_px))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def with_thumbnail(
    store: Store, report: ItemReport, pixels: NDArray[Any], config: ImageQAConfig
) -> ItemReport:
    """Write the review thumbnail of an item that needs review; returns the report with its key."""
    if not report.needs_review:
        return report
    name = thumbnail_key(report.key)
    store.write_bytes(name, display_image(pixels, config.thumbnail_px))
    return ItemReport(report.key, report.kind, report.checks, name)


def skipped(item: QAItem, why: str) -> ItemReport:
    check = CheckResult("image_qa", "info", True, None, None, f"skipped: {why}")
    return ItemReport(item.key, item.kind, (check,))


def assess_instance(store: Store, item: QAItem, config: ImageQAConfig) -> ItemReport:
    skip = config.dicom.skip_modalities
    if item.modality in skip:
        return skipped(item, f"modality {item.modality} is not judged")
    frame, modality = dicom_frame(store, item.key)
    modality = item.modality or modality
    if frame is None or modality in skip:
        return skipped(
            item, "no pixel data" if frame is None else f"modality {modality} is not judged"
        )
    checks = tuple(dicom_checks(frame, modality, config.dicom))
    return with_thumbnail(store, ItemReport(item.key, item.kind, checks), frame, config)


def assess_slide(store: Store, item: QAItem, config: ImageQAConfig) -> ItemReport:
    with slide_levels(store, item.key) as levels:
        checks, thumb = slide_checks(levels, config.slide)
    return with_thumbnail(store, ItemReport(item.key, item.kind, tuple(checks)), thumb, config)


def assess_item(store: Store, item: QAItem, config: ImageQAConfig) -> ItemReport:
    """Judge one item; an object that cannot be read or decoded is itself a finding."""
    try:
        if item.kind == "slide":
            return assess_slide(store, item, config)
        return assess_instance(store, item, config)
    except TransientStoreError:
        raise
    except Exception as err:  # any decoder or format error: queue the item, keep the batch going
        log.warning("cannot judge %s: %s", item.key, err)
        detail = f"{type(err).__name__}: {err}"
        return ItemReport(
            item.key, item.kind, (CheckResult("readable", "fail", False, None, None, detail),)
        )


def assess_group(items: Sequence[QAItem], store: Store, config: ImageQAConfig) -> list[ItemReport]:
    """One Dask task: judge a group of items (the store travels pickled, by URL and config)."""
    return [assess_item(store, item, config) for item in items]


def assess_items(
    store: Store,
    items: Sequence[QAItem],
    config: ImageQAConfig,
    *,
    dask_address: str = "",
    workers: int = 0,
) -> list[ItemReport]:
    """Judge every item on Dask (coarse tasks of ``group_size`` items); order is kept."""
    if not items:
        return []
    from tasks.parallel import dask_client

    size = config.group_size
    groups = [list(items[i : i + size]) for i in range(0, len(items), size)]
    with dask_client(dask_address, workers) as client:
        futures = client.map(assess_group, groups, store=store, config=config, pure=False)
        results = client.gather(futures)
    return [report for group in results for report in group]

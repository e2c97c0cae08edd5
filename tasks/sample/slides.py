"""Synthetic whole-slide images in Aperio SVS layout for the ``mira sample-data`` demo drop zone.

The slide is drawn procedurally, tile by tile, so a 20,000 px slide never sits in memory: a small
tissue map (where the tissue is, how strongly it is stained) is interpolated per tile and combined
with a periodic H&E texture. Every pyramid level is drawn from the same map and a block-averaged
copy of the same texture, so levels agree with each other the way a real scanner's levels do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from mira.errors import InvalidInput
from tasks.sample.ndpi import NdpiIdentity, NdpiSlide, write_ndpi

Progress = Callable[[str, int, int], None]
FloatImage = NDArray[np.float32]

TILE = 256
JPEG_QUALITY = 70
APERIO_HEADER = "Aperio Image Library v12.0.15"
MIN_SLIDE_SIZE = 512
LEVEL_FACTOR = 4
MIN_LEVELS = 3
THUMBNAIL_MAX = 768
LABEL_SIZE = (387, 463)
MACRO_SIZE = (1280, 431)
NDPI_MAX_SIZE = 4096  # sample NDPI side at most: a level is one JPEG, encoded in memory
NDPI_MPP = 0.4416  # a NanoZoomer's pixel size at 20x
MAP_SIZE = 1024
TEXTURE_PERIOD = 1024
TEXTURE_SEED = 0xE05
EDGE_WIDTH = 4.0  # level pixels over which tissue fades into glass
EDGE_SLOPE = 0.01  # typical change of the tissue map per map cell at a tissue edge
FRAY = 0.01  # tissue-map units by which the texture roughens the tissue edge
FRAY_LIMIT = 4.0
BACKGROUND_RGB = (242.0, 240.0, 241.0)
BACKGROUND_RGB_INT = (242, 240, 241)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SlideIdentity:
    """The identifiers a scanner writes into a slide: Aperio metadata, the label, the file name."""

    filename: str  # Aperio "Filename" (sites put case and patient in it)
    date: str  # Aperio "Date", MM/DD/YY
    time: str  # Aperio "Time", HH:MM:SS
    user: str  # Aperio "User", a UUID
    scanscope_id: str
    patient_name: str  # DICOM-style FAMILY^GIVEN, printed on the label
    patient_id: str
    case_number: str  # surgical pathology accession, printed and bar-coded on the label
    seed: int


def level_sizes(slide_size: int) -> tuple[int, ...]:
    """Pixel width of each pyramid level: downsample 4, 16, 64... until the level is small."""
    if slide_size < MIN_SLIDE_SIZE:
        raise InvalidInput(f"slide size {slide_size} is below the minimum {MIN_SLIDE_SIZE} px")
    sizes = [slide_size]
    while len(sizes) < MIN_LEVELS or sizes[-1] // LEVEL_FACTOR >= TILE:
        sizes.append(sizes[-1] // LEVEL_FACTOR)
    return tuple(sizes)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: tuple[float, float]) -> FloatImage:
    """Periodic Gaussian-filtered white noise with unit variance (sigma in pixels, y and x)."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2.0 * np.pi**2 * ((fy * sigma[0]) ** 2 + (fx * sigma[1]) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _stamp(
    rng: np.random.Generator, size: int, count: int, radii: tuple[float, float]
) -> FloatImage:
    """Coverage (0..1) of ``count`` elliptical nuclei scattered over a periodic square."""
    points = np.zeros((size, size), np.float32)
    ys, xs = rng.integers(0, size, count), rng.integers(0, size, count)
    points[ys, xs] = rng.uniform(0.55, 1.0, count)
    yy = np.fft.fftfreq(size, 1.0 / size)[:, None]
    xx = np.fft.fftfreq(size, 1.0 / size)[None, :]
    kernel = ((yy / radii[0]) ** 2 + (xx / radii[1]) ** 2 <= 1.0).astype(np.float32)
    spread = np.fft.irfft2(np.fft.rfft2(points) * np.fft.rfft2(kernel), s=(size, size))
    return np.clip(spread, 0.0, 1.0).astype(np.float32)  # overlapping nuclei do not add up


@dataclass(frozen=True)
class HeTexture:
    """A periodic H&E texture at one pyramid level; fine detail only, so it never shows a pattern.

    Coarse variation (cell density, stain strength, holes) comes from the non-periodic tissue map.
    """

    sparse: FloatImage  # optical density (255 - RGB) of stroma with few nuclei
    dense: FloatImage  # the same stroma crowded with nuclei
    coverage: FloatImage  # 0..1, below 1 in the small clefts between fibres
    fray: FloatImage  # noise that roughens tissue edges

    def reduced(self, factor: int) -> HeTexture:
        """The texture as a level ``factor`` times smaller sees it, repeated to fill a tile."""
        return HeTexture(*(_tile_periodic(_block_mean(image, factor)) for image in self.fields()))

    def fields(self) -> tuple[FloatImage, FloatImage, FloatImage, FloatImage]:
        return self.sparse, self.dense, self.coverage, self.fray


def _nuclei(rng: np.random.Generator, size: int, sets: int) -> FloatImage:
    """Coverage of ``sets`` populations of nuclei of assorted shapes, with chromatin texture."""
    shapes = ((5.0, 7.0), (7.0, 5.0), (4.5, 4.5), (6.0, 6.0))
    nuclei = np.zeros((size, size), np.float32)
    for index in range(sets):
        stamp = _stamp(rng, size, size * size // 2400, shapes[index % len(shapes)])
        nuclei = np.maximum(nuclei, stamp)
    chromatin = np.clip(0.85 + 0.2 * _smooth_noise(rng, size, (1.2, 1.2)), 0, 1)
    return (nuclei * chromatin).astype(np.float32)


@cache
def shared_texture() -> HeTexture:
    """One texture for every slide (slides differ by their tissue map); built once, ~1 s."""
    return he_texture(np.random.default_rng(TEXTURE_SEED))


def he_texture(rng: np.random.Generator) -> HeTexture:
    """Wavy eosin-pink collagen fibres with haematoxylin-purple nuclei, periodic over its size."""
    size = TEXTURE_PERIOD
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (2 * np.pi / size)
    wavy = 6.0 * _smooth_noise(rng, size, (48.0, 48.0))
    fibres = 0.5 * np.sin(70 * xx + 40 * yy + wavy) + 0.5 * np.sin(-30 * xx + 85 * yy + wavy)
    fibres += 0.5 * _smooth_noise(rng, size, (2.0, 2.0))
    density = np.clip(0.5 + 0.14 * fibres + 0.1 * _smooth_noise(rng, size, (6.0, 6.0)), 0, 1)
    stroma_light, stroma_dense = np.array([238, 176, 208.0]), np.array([201, 104, 164.0])
    stroma = stroma_light + density[..., None] * (stroma_dense - stroma_light)
    stroma += 4.0 * rng.standard_normal((size, size, 1))
    haematoxylin = np.array([86, 52, 136.0])
    few = _nuclei(rng, size, 1)
    many = np.maximum(few, _nuclei(rng, size, 5))
    sparse, dense = (stroma + n[..., None] * 0.9 * (haematoxylin - stroma) for n in (few, many))
    clefts = np.clip((_smooth_noise(rng, size, (3.0, 3.0)) - 1.8) * 3.0, 0.0, 1.0)
    return HeTexture(
        sparse=(255.0 - np.clip(sparse, 0, 255)).astype(np.float32),
        dense=(255.0 - np.clip(dense, 0, 255)).astype(np.float32),
        coverage=(1.0 - clefts * (1.0 - many)).astype(np.float32),
        fray=np.clip(_smooth_noise(rng, size, (6.0, 6.0)), -FRAY_LIMIT, FRAY_LIMIT),
    )


def _block_mean(image: FloatImage, factor: int) -> FloatImage:
    """Average ``factor`` x ``factor`` blocks: what a scanner's lower pyramid level sees."""
    h, w = image.shape[:2]
    blocks = image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3)).astype(np.float32)


def _tile_periodic(image: FloatImage) -> FloatImage:
    """Repeat a periodic image until it is at least one tile wide, so tiles are plain slices."""
    reps = max(1, TILE // image.shape[0])
    return np.tile(image, (reps, reps) + (1,) * (image.ndim - 2))


@dataclass(frozen=True)
class TissueMap:
    """Coarse, non-periodic fields over the whole slide, MAP_SIZE square."""

    tissue: FloatImage  # > 0.5 where tissue lies
    stain: FloatImage  # stain strength, around 1
    cellularity: FloatImage  # 0 (stroma) .. 1 (crowded with nuclei)


def tissue_map(rng: np.random.Generator) -> TissueMap:
    """A few ragged tissue fragments with holes, away from the slide border."""
    yy, xx = np.mgrid[0:MAP_SIZE, 0:MAP_SIZE].astype(np.float32) / MAP_SIZE
    field = np.zeros((MAP_SIZE, MAP_SIZE), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.28, 0.72, 2)
        ry, rx = rng.uniform(0.12, 0.24, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        field = np.maximum(field, np.exp(-(u**2 + v**2)))
    ragged = field + 0.3 * np.sqrt(field) * _smooth_noise(rng, MAP_SIZE, (10.0, 10.0))
    holes = np.clip(_smooth_noise(rng, MAP_SIZE, (2.5, 2.5)) - 2.3, 0, None)
    border = np.minimum.reduce([yy, xx, 1 - yy, 1 - xx]) > 0.04
    stain = 1.0 + 0.15 * _smooth_noise(rng, MAP_SIZE, (60.0, 60.0))
    stain += 0.08 * _smooth_noise(rng, MAP_SIZE, (12.0, 12.0))
    cellularity = np.clip(0.45 + 0.4 * _smooth_noise(rng, MAP_SIZE, (20.0, 20.0)), 0, 1)
    return TissueMap(
        tissue=np.where(border, ragged + 0.1 - holes, 0.0).astype(np.float32),
        stain=stain.astype(np.float32),
        cellularity=cellularity.astype(np.float32),
    )


Axis = tuple[NDArray[np.intp], NDArray[np.float32]]


def _axis(start: float, step: float, scale: float) -> Axis:
    """Map cell below each of a tile's pixel centres along one axis, and the fraction past it."""
    pos = np.clip((start + (np.arange(TILE) + 0.5) * step) * scale - 0.5, 0, MAP_SIZE - 1.001)
    cell = pos.astype(np.intp)
    return cell, (pos - cell).astype(np.float32)


def _bilinear(window: FloatImage, rows: Axis, cols: Axis) -> FloatImage:
    """Sample map fields (cells x cells x fields) at a tile's pixels; elementwise, no BLAS, so
    the result is the same bit for bit on every machine."""
    (r, fr), (c, fc) = rows, cols
    r, c = r - r[0], c - c[0]
    along = window[r] + fr[:, None, None] * (window[r + 1] - window[r])
    return along[:, c] + fc[None, :, None] * (along[:, c + 1] - along[:, c])


class SlidePainter:
    """Draws any tile of any pyramid level of one synthetic slide; deterministic for its seed."""

    def __init__(self, slide_size: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x5A1DE])
        self.slide_size = slide_size
        self.sizes = level_sizes(slide_size)
        fields = tissue_map(rng)
        self.fields = np.stack([fields.tissue, fields.stain, fields.cellularity], axis=-1)
        self.textures = [
            shared_texture().reduced(min(LEVEL_FACTOR**level, TEXTURE_PERIOD))
            for level in range(len(self.sizes))
        ]
        grain = np.random.default_rng([seed, 0xB6]).normal(0.0, 1.2, (TILE, TILE, 1))
        self.background = (np.array(BACKGROUND_RGB) + grain).astype(np.float32)
        self.blank = np.clip(self.background, 0, 255).astype(np.uint8)

    def tile(self, level: int, ty: int, tx: int) -> NDArray[np.uint8]:
        """The RGB tile at row ``ty``, column ``tx`` of ``level``; plain background off the tissue."""
        step = LEVEL_FACTOR**level
        rows = _axis(ty * TILE * step, step, MAP_SIZE / self.slide_size)
        cols = _axis(tx * TILE * step, step, MAP_SIZE / self.slide_size)
        window = self.fields[rows[0][0] : rows[0][-1] + 2, cols[0][0] : cols[0][-1] + 2]
        gain = max(2.0, self.slide_size / MAP_SIZE / (EDGE_SLOPE * step * EDGE_WIDTH))
        if window[..., 0].max() <= 0.5 - FRAY_LIMIT * FRAY - 0.5 / gain:
            return self.blank
        fields = _bilinear(window, rows, cols)
        texture = self.textures[level]
        period = texture.sparse.shape[0]
        y, x = (ty * TILE) % period, (tx * TILE) % period
        patch = (slice(y, y + TILE), slice(x, x + TILE))
        tissue = fields[..., 0] + FRAY * texture.fray[patch]
        cover = np.clip((tissue - 0.5) * gain + 0.5, 0.0, 1.0) * texture.coverage[patch]
        sparse = texture.sparse[patch]
        density = sparse + fields[..., 2:3] * (texture.dense[patch] - sparse)
        tissue_rgb = 255.0 - density * fields[..., 1:2]
        out = self.background + cover[..., None] * (tissue_rgb - self.background)
        return np.clip(out, 0, 255).astype(np.uint8)

    def tiles(self, level: int, progress: Callable[[int], None]) -> Iterator[NDArray[np.uint8]]:
        """Every tile of ``level`` in TIFF order, drawn a row at a time; reports each row drawn."""
        count = -(-self.sizes[level] // TILE)
        for ty in range(count):
            row = [self.tile(level, ty, tx) for tx in range(count)]
            progress(count)
            yield from row

    def level_image(self, level: int) -> NDArray[np.uint8]:
        """A whole (small) level as one array, for the thumbnail and the macro photograph."""
        count = -(-self.sizes[level] // TILE)
        rows = [np.hstack([self.tile(level, ty, tx) for tx in range(count)]) for ty in range(count)]
        size = self.sizes[level]
        return np.vstack(rows)[:size, :size]


def overview_image(painter: SlidePainter, size: int) -> Image.Image:
    """The slide scaled down to ``size`` px, from the smallest level at least that large."""
    level = max(i for i, s in enumerate(painter.sizes) if s >= size or i == 0)
    image = Image.fromarray(painter.level_image(level))
    return image.resize((size, size), Image.Resampling.BOX)


def label_image(slide: SlideIdentity) -> Image.Image:
    """The slide label as photographed: case, patient, MRN, date and a bar code."""
    image = Image.new("RGB", LABEL_SIZE, (250, 250, 246))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=26)
    lines = (slide.case_number, slide.patient_name, slide.patient_id, "H&E  A1", slide.date)
    for row, text in enumerate(lines):
        draw.text((18, 14 + row * 38), text, fill=(20, 20, 30), font=font)
    bits = np.unpackbits(
        np.frombuffer(hashlib.sha256(slide.case_number.encode()).digest(), np.uint8)
    )
    x = 18
    for bit in bits[:100]:
        width = 3 if bit else 1
        draw.rectangle((x, 330, x + width - 1, 440), fill=(0, 0, 0))
        x += width + 2
        if x > LABEL_SIZE[0] - 20:
            break
    return image


def macro_image(overview: Image.Image, label: Image.Image) -> Image.Image:
    """The low-resolution photograph of the whole glass slide: label at one end, tissue beside it."""
    width, height = MACRO_SIZE
    side = height - 40
    turned = label.rotate(90, expand=True)
    turned = turned.resize((side * turned.width // turned.height, side))
    image = Image.new("RGB", MACRO_SIZE, (214, 214, 210))
    glass_left = turned.width + 40
    glass = Image.new("RGB", (width - glass_left - 20, height - 30), BACKGROUND_RGB_INT)
    image.paste(glass, (glass_left, 15))
    image.paste(turned, (20, 20))
    tissue = overview.resize((side, side), Image.Resampling.BILINEAR)
    image.paste(tissue, (glass_left + (glass.width - side) // 2, 20))
    return image


def _aperio_fields(slide: SlideIdentity, size: int) -> str:
    """The ``key = value`` part of an Aperio description, carrying the scan's identifiers."""
    rng = np.random.default_rng([slide.seed, 0xA9])
    left, top = rng.uniform(20.0, 30.0, 2)
    fields = (
        "AppMag = 20",
        "StripeWidth = 2040",
        f"ScanScope ID = {slide.scanscope_id}",
        f"Filename = {slide.filename}",
        f"Date = {slide.date}",
        f"Time = {slide.time}",
        "Time Zone = GMT+00:00",
        f"User = {slide.user}",
        "MPP = 0.4990",
        f"Left = {left:.6f}",
        f"Top = {top:.6f}",
        "LineCameraSkew = -0.000424",
        "LineAreaXOffset = 0.019265",
        "LineAreaYOffset = -0.000313",
        "Focus Offset = 0.000000",
        f"ImageID = {int(rng.integers(1000, 99999))}",
        f"OriginalWidth = {size}",
        f"OriginalHeight = {size}",
        "Filtered = 5",
    )
    return "|".join(fields)


def _level_description(size: int, level_size: int | None) -> str:
    """Aperio's first description line pair; ``level_size`` is the ``-> WxH`` of a reduced page."""
    reduced = f" -> {level_size}x{level_size}" if level_size is not None else ""
    return (
        f"{APERIO_HEADER} \r\n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE})"
        f"{reduced} JPEG/RGB Q={JPEG_QUALITY}"
    )


def _jpeg_args() -> dict[str, Any]:
    """tifffile options shared by every JPEG page; no Software or DateTime tag, so bytes repeat."""
    return {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_QUALITY},
        "metadata": None,
        "software": False,
    }


def write_svs(
    path: Path, slide: SlideIdentity, slide_size: int, progress: Progress | None = None
) -> None:
    """Write one synthetic Aperio SVS: levels, stripped thumbnail second, label and macro last.

    Page order and descriptions follow real ScanScope files, so ``tifffile`` reports
    ``is_svs`` with series Baseline (all levels), Thumbnail, Label and Macro.
    """
    painter = SlidePainter(slide_size, slide.seed)
    total = sum((-(-s // TILE)) ** 2 for s in painter.sizes)
    done = 0

    def advance(tiles: int) -> None:
        nonlocal done
        done += tiles
        if progress is not None:
            progress("sample slide", done, total)  # a file name may hold a patient name

    overview = overview_image(painter, min(THUMBNAIL_MAX, slide_size // 3))
    label = label_image(slide)
    fields = _aperio_fields(slide, slide_size)
    bigtiff = slide_size * slide_size * 3 // 4 >= 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for level, size in enumerate(painter.sizes):
            tif.write(
                painter.tiles(level, advance),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                description=_level_description(slide_size, size if level else None)
                + (f"|{fields}" if level == 0 else ""),
                maxworkers=1,
                **_jpeg_args(),
            )
            if level == 0:
                tif.write(
                    np.asarray(overview),
                    description=f"{_level_description(slide_size, overview.width)}|{fields}",
                    **_jpeg_args(),
                )
        tif.write(
            np.asarray(label),
            photometric="rgb",
            compression="lzw",
            subfiletype=1,
            description=f"{APERIO_HEADER}\r\nlabel {label.width}x{label.height}",
            metadata=None,
            software=False,
        )
        macro = macro_image(overview, label)
        tif.write(
            np.asarray(macro),
            subfiletype=9,
            description=f"{APERIO_HEADER}\r\nmacro {macro.width}x{macro.height}",
            **_jpeg_args(),
        )


def slide_identity(
    patient_name: str, patient_id: str, first_visit: str, index: int, seed: int
) -> SlideIdentity:
    """What the scanner records for slide ``index``: case number, scan date, user, file name.

    ``first_visit`` is a DICOM date; the biopsy is scanned within a month of it.
    """
    rng = random.Random(f"mira-slide:{seed}:{index}")
    scanned = dt.date.fromisoformat(first_visit) + dt.timedelta(rng.randint(1, 30))
    case = f"S{scanned:%y}-{rng.randint(0, 99999):05d}"
    digest = hashlib.sha256(f"mira-slide:{seed}:{index}".encode()).digest()
    clock = f"{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    return SlideIdentity(
        filename=f"{case}_{patient_name.replace('^', '_')}",
        date=f"{scanned:%m/%d/%y}",
        time=clock,
        user=str(uuid.UUID(bytes=digest[:16], version=4)),
        scanscope_id=f"SS{rng.randint(1000, 9999)}",
        patient_name=patient_name,
        patient_id=patient_id,
        case_number=case,
        seed=int.from_bytes(digest[16:24], "big"),
    )


def slide_path(slide: SlideIdentity, suffix: str = ".svs") -> str:
    """Where the slide sits inside the pathology batch: a patient folder, as sites upload."""
    return f"{slide.patient_name.replace('^', '_')}/{slide.filename}{suffix}"


def write_sample_ndpi(path: Path, slide: SlideIdentity, slide_size: int) -> None:
    """One synthetic slide of the sample drop zone in NDPI layout: the same painter and label as
    the SVS samples, at most ``NDPI_MAX_SIZE`` px (a level is one JPEG, encoded in memory)."""
    size = min(slide_size, NDPI_MAX_SIZE)
    painter = SlidePainter(size, slide.seed)
    levels = tuple(painter.level_image(level) for level in range(len(painter.sizes)))
    overview = overview_image(painter, min(THUMBNAIL_MAX, size // 3))
    macro = np.asarray(macro_image(overview, label_image(slide)).convert("RGB"))
    month, day, year = (int(part) for part in slide.date.split("/"))
    hour, minute, second = (int(part) for part in slide.time.split(":"))
    identity = NdpiIdentity(
        slide_label=f"{slide.case_number} {slide.patient_name}",
        serial_number=slide.scanscope_id,
        scanned=dt.datetime(2000 + year, month, day, hour, minute, second),
        reference=rf"C:\NDP\Scans\{slide.filename}.ndpi",
    )
    write_ndpi(path, NdpiSlide(levels, macro, NDPI_MPP, 20.0, identity, quality=80))


def write_pathology_batch(
    batch_dir: Path,
    slides: list[SlideIdentity],
    slide_size: int,
    progress: Progress | None,
    ndpi: int = 0,
    dicom: int = 0,
) -> Path:
    """Write the slides (the last ``ndpi`` of them as Hamamatsu NDPI, the ``dicom`` before
    those as a DICOM whole-slide series in a folder of their own, the others as Aperio SVS),
    then ``manifest.json`` last, which tells ingestion the batch is complete.

    The manifest is ``{"batch": name, "files": [{"path": relative posix path, "sha256": hex,
    "size": int, "patient_id": str}]}``, listing every file of the batch but itself; each
    slide's ``patient_id`` links it to its patient (the PatientID of their DICOM files); a
    DICOM slide's instances take no link, as they name their patient themselves.
    """
    owners: dict[str, str] = {}
    for index, slide in enumerate(slides):
        as_ndpi = index >= len(slides) - ndpi
        if not as_ndpi and index >= len(slides) - ndpi - dicom:
            from tasks.sample.dicom_wsi import write_sample_dicom_wsi  # it draws with this module

            folder = batch_dir / slide_path(slide, "_dicom")
            write_sample_dicom_wsi(folder, slide, slide_size, _tile_progress(progress))
            continue
        name = slide_path(slide, ".ndpi" if as_ndpi else ".svs")
        path = batch_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if as_ndpi:
            write_sample_ndpi(path, slide, slide_size)
        else:
            write_svs(path, slide, slide_size, progress)
        owners[name] = slide.patient_id
    files = sorted(p for p in batch_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = [
        {
            "path": p.relative_to(batch_dir).as_posix(),
            "sha256": _sha256(p),
            "size": p.stat().st_size,
        }
        | (
            {"patient_id": owners[p.relative_to(batch_dir).as_posix()]}
            if p.relative_to(batch_dir).as_posix() in owners
            else {}
        )
        for p in files
    ]
    manifest = batch_dir / MANIFEST
    manifest.write_text(json.dumps({"batch": batch_dir.name, "files": entries}, indent=2) + "\n")
    return manifest


def _tile_progress(progress: Progress | None) -> Callable[[int, int], None]:
    """A DICOM slide's frames reported as ``sample slide`` steps, like an SVS's tiles."""
    return lambda done, total: progress("sample slide", done, total) if progress else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

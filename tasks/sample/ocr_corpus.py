"""A test set for burned-in text detection: real images from installed packages, each twice,
once clean and once with text rendered onto it, with the text boxes as ground truth.

Sources (none written by this project): pydicom's test files (CT and MR 16-bit, an NM whole body,
an ultrasound RGB still and a 30-frame ultrasound cine, cropped to the parts without text),
nibabel's test data (an MR angiography MIP, a 4D MR series taken as a cine), scikit-image's bundled
pictures (a retinal fundus, an IHC stain, fluorescence cells, microaneurysms) and the project's
own SVS fixture (its thumbnail and a 2000x1600 region of its full resolution). Each source gives
several variants (slice or frame, flip, crop, intensity scale); text is drawn with OpenCV's
Hershey fonts or a TrueType font through PIL (its bundled font or OpenCV's DejaVu faces), from
7 pixels high (and a 50th of the shorter side) up, in corners, banners or over the anatomy, at
the maximum, a high or a middle level, bright on dark or dark on bright, in white or a colour;
a line whose ink would not differ from what lies under 90% of it by a fifth of the range is
redrawn in white or black. Everything is deterministic for a seed.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import tifffile
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GREY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
MULTIFRAME_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
HERSHEY_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
)
SURNAMES = ("DOE", "SMITH", "GARCIA", "NGUYEN", "MULLER", "OKAFOR", "ROSSI", "TANAKA", "KOWALSKI")
GIVEN = ("JANE", "JOHN", "MARIA", "WEI", "AMIR", "LENA", "PAOLO", "YUKI")
PLACES = ("ST MARY HOSP", "CITY CLINIC", "RADIOLOGY 3", "ECHO LAB", "GENERAL HOSPITAL")


@dataclass(frozen=True)
class TextLine:
    """One rendered line of text: the frame it is in and its ink's bounding box (end exclusive)."""

    frame: int
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class CorpusImage:
    """One test image: frames as (F, H, W) grey or (F, H, W, 3) RGB, and the text drawn on it."""

    name: str
    source: str
    frames: np.ndarray
    lines: tuple[TextLine, ...]

    @property
    def has_text(self) -> bool:
        return bool(self.lines)


@dataclass(frozen=True)
class Source:
    """A real image from a package: its name, its package, and a loader of (F, H, W[, 3]) frames."""

    name: str
    package: str
    load: Callable[[], np.ndarray]


def sources() -> list[Source]:
    """Every image source this machine has (a missing optional package is skipped)."""
    found = [
        Source("ct-small", "pydicom", lambda: _dicom_frames(_pydicom_file("CT_small.dcm"))),
        Source("mr-small", "pydicom", lambda: _dicom_frames(_pydicom_file("MR_small.dcm"))),
        Source("nm-whole-body", "pydicom", lambda: _dicom_frames(_pydicom_file("JPEG2000.dcm"))),
        Source(
            "us-doppler",
            "pydicom",
            lambda: _dicom_frames(_pydicom_file("examples_rgb_color.dcm"))[:, 62:168, 20:290],
        ),
        Source(
            "us-cine",
            "pydicom",
            lambda: _dicom_frames(_pydicom_file("examples_ybr_color.dcm"))[:8, 35:210, 45:285],
        ),
    ]
    found += _nibabel_sources() + _skimage_sources() + _slide_sources()
    return found


def _pydicom_file(name: str) -> Path:
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def _dicom_frames(path: Path) -> np.ndarray:
    dataset = pydicom.dcmread(path)
    dataset.pixel_array_options(as_rgb=True)
    pixels = np.asarray(dataset.pixel_array)
    single = pixels.ndim == 2 or (pixels.ndim == 3 and int(dataset.SamplesPerPixel) == 3)
    return pixels[None] if single else pixels


def _nibabel_sources() -> list[Source]:
    try:
        import nibabel
    except ImportError:
        return []
    data = Path(nibabel.__file__).parent
    found = []
    angiogram = data / "nicom" / "tests" / "data" / "slicethickness_empty_string.dcm"
    if angiogram.is_file():  # an MR angiography MIP (its other DICOM files are synthetic ramps)
        found.append(Source("mr-mip", "nibabel", lambda: _dicom_frames(angiogram)[:, 96:320]))
    series = data / "tests" / "data" / "example4d.nii.gz"
    if series.is_file():

        def cine() -> np.ndarray:
            volume = np.asarray(nibabel.load(series).dataobj)  # type: ignore[attr-defined]
            return np.ascontiguousarray(volume[:, :, 8:16, 0].transpose(2, 1, 0)[:, ::-1])

        found.append(Source("mr-4d-cine", "nibabel", cine))
    return found


def _skimage_sources() -> list[Source]:
    try:
        import skimage
    except ImportError:
        return []
    data = Path(skimage.__file__).parent / "data"
    found = []
    for name, file in (
        ("retina-fundus", "retina.jpg"),
        ("ihc-stain", "ihc.png"),
        ("cells", "cell.png"),
        ("microaneurysms", "microaneurysms.png"),
    ):
        if (data / file).is_file():
            found.append(Source(name, "scikit-image", functools.partial(_picture, data / file)))
    return found


def _picture(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read picture {path}")
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, 2::-1])
    return image[None]


def _slide_sources() -> list[Source]:
    slide = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "cmu_small_region.svs"
    if not slide.is_file():
        return []

    def page(index: int, rows: int, columns: int) -> np.ndarray:
        with tifffile.TiffFile(slide) as tiff:
            pixels = np.asarray(tiff.pages[index].asarray())
            return pixels[None, :rows, :columns, :3]

    # The thumbnail (page 1) and a large crop of the full-resolution level; the label page is
    # left out: it carries real handwriting whose boxes nobody has drawn.
    return [
        Source("slide-thumbnail", "openslide-fixture", lambda: page(1, 768, 574)),
        Source("slide-region", "openslide-fixture", lambda: page(0, 2000, 1600)),
    ]


def corpus(seed: int = 14, variants: int = 6) -> Iterator[tuple[CorpusImage, CorpusImage]]:
    """(clean, with text) pairs: ``variants`` per source, the same pixels apart from the text."""
    rng = random.Random(seed)
    for source in sources():
        frames = source.load()
        for index in range(variants):
            base = _variant(frames, rng)
            name = f"{source.package}-{source.name}-{index:02d}"
            text, lines = _render(base, rng)
            yield (
                CorpusImage(f"{name}-clean", source.package, base, ()),
                CorpusImage(f"{name}-text", source.package, text, tuple(lines)),
            )


def _variant(frames: np.ndarray, rng: random.Random) -> np.ndarray:
    """A flip, a crop of at least 70% per side and (for deep grey) an intensity scale."""
    if frames.shape[0] > 1 and rng.random() < 0.3:
        frames = frames[rng.randrange(frames.shape[0])][None]
    if rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    rows, columns = frames.shape[1:3]
    height = rng.randint(int(rows * 0.7), rows)
    width = rng.randint(int(columns * 0.7), columns)
    top, left = rng.randint(0, rows - height), rng.randint(0, columns - width)
    frames = np.ascontiguousarray(frames[:, top : top + height, left : left + width])
    if frames.dtype != np.uint8 and rng.random() < 0.5:
        peak = float(np.iinfo(frames.dtype).max) if frames.dtype.kind in "iu" else 1.0
        factor = rng.uniform(0.5, min(4.0, peak / max(1.0, float(frames.max()))))
        frames = (frames.astype(np.float64) * max(factor, 0.5)).astype(frames.dtype)
    return frames


def _render(frames: np.ndarray, rng: random.Random) -> tuple[np.ndarray, list[TextLine]]:
    """Draw 1-4 lines of identifying text on every frame (a cine's banner is on each frame)."""
    rows, columns = frames.shape[1:3]
    out = frames.astype(np.float64)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(1, 4)):
        placed = _place_line(rows, columns, rng, boxes)
        if placed is not None:
            boxes.append(_paint(out, frames, *placed, rng))
    if not boxes:  # an image too small for any line still gets one, at the smallest size
        glyphs = _hershey("ID 4471", cv2.FONT_HERSHEY_PLAIN, 7)[: rows - 2, : columns - 2]
        boxes.append(_paint(out, frames, glyphs, 1, 1, rng))
    text = np.clip(np.rint(out), *_limits(frames.dtype)).astype(frames.dtype)
    lines = [TextLine(f, *box) for f in range(frames.shape[0]) for box in boxes]
    return text, lines


def _place_line(
    rows: int, columns: int, rng: random.Random, taken: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, int, int] | None:
    """Glyphs of one line and a free place for them, or None when the image has no room."""
    # Scanners size their fonts to be read at the image's display size: at least 7 pixels, and
    # at least a 50th of the shorter side.
    smallest = max(7, min(rows, columns) // 50)
    height = rng.randint(smallest, max(smallest + 1, min(40, rows // 8)))
    glyphs = _glyphs(_phrase(rng), height, rng)
    if glyphs.shape[0] >= rows or glyphs.shape[1] >= columns:
        return None
    for _ in range(20):
        top, left = _position(rows, columns, glyphs.shape, rng)
        box = (left, top, left + glyphs.shape[1], top + glyphs.shape[0])
        if all(_apart(box, other) for other in taken):
            return glyphs, top, left
    return None


def _paint(
    out: np.ndarray, frames: np.ndarray, glyphs: np.ndarray, top: int, left: int, rng: random.Random
) -> tuple[int, int, int, int]:
    """Blend the glyphs into every frame in a colour that stands out from what is under them
    (so the ground truth is text a person can read); return the ink's bounding box."""
    bottom, right = top + glyphs.shape[0], left + glyphs.shape[1]
    under = frames[:, top:bottom, left:right].astype(np.float64)
    value, colour = _ink_colour(frames, under, glyphs > 0.5, rng)
    alpha = glyphs[None, :, :, None] if frames.ndim == 4 else glyphs[None]
    target = np.asarray(colour if frames.ndim == 4 else value, np.float64)
    region = out[:, top:bottom, left:right]
    region[...] = region * (1 - alpha) + target * alpha
    found = np.argwhere(glyphs > 0.5)
    (y0, x0), (y1, x1) = found.min(axis=0), found.max(axis=0)
    return (left + int(x0), top + int(y0), left + int(x1) + 1, top + int(y1) + 1)


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + 3 <= b[0] or b[2] + 3 <= a[0] or a[3] + 3 <= b[1] or b[3] + 3 <= a[1]


def _phrase(rng: random.Random) -> str:
    """Text of the kinds scanners and screens print: names, IDs, dates, places, settings."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    if kind == 1:
        return f"MRN {rng.randint(100000, 99999999)}"
    if kind == 2:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1930, 2024)}"
    if kind == 3:
        return rng.choice(PLACES)
    if kind == 4:
        return f"{rng.randint(8, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 5)))
    return f"{letters} {rng.randint(1, 999)}"


def _glyphs(text: str, height: int, rng: random.Random) -> np.ndarray:
    """An anti-aliased ink mask (0..1) of the text, about ``height`` pixels of cap height."""
    if rng.random() < 0.5:
        return _hershey(text, rng.choice(HERSHEY_FONTS), height)
    return _truetype(text, height, rng)


def _hershey(text: str, font: int, height: int) -> np.ndarray:
    scale = cv2.getFontScaleFromHeight(font & 0xF, height, 1)
    thickness = 1 if height < 16 else 2
    (width, text_height), baseline = cv2.getTextSize(text, font, scale, thickness)
    canvas = np.zeros((text_height + baseline + 4, width + 4), np.uint8)
    cv2.putText(canvas, text, (2, text_height + 2), font, scale, 255, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255


def _truetype(text: str, height: int, rng: random.Random) -> np.ndarray:
    """PIL's bundled font, or a DejaVu face that OpenCV ships, at a pixel size."""
    faces = sorted((Path(cv2.__file__).parent / "qt" / "fonts").glob("DejaVu*.ttf"))
    size = max(8, int(height * 1.35))
    if faces and rng.random() < 0.6:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.truetype(
            str(rng.choice(faces)), size
        )
    else:
        font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (int(right - left) + 4, int(bottom - top) + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font)
    return np.asarray(canvas, np.float32) / 255


def _position(
    rows: int, columns: int, shape: tuple[int, ...], rng: random.Random
) -> tuple[int, int]:
    """Corners and banners (where scanners print) or anywhere, over anatomy included."""
    height, width = shape[:2]
    free_rows, free_columns = rows - height, columns - width
    place = rng.randrange(4)
    if place == 0:  # top or bottom banner
        top = rng.choice(
            (rng.randint(0, free_rows // 8), free_rows - rng.randint(0, free_rows // 8))
        )
        return top, rng.randint(0, free_columns)
    if place == 1:  # a corner
        top = rng.choice((0, free_rows)) if rng.random() < 0.5 else rng.randint(0, free_rows)
        return top, rng.choice((rng.randint(0, free_columns // 6), free_columns))
    if place == 2:  # the middle third, over the anatomy
        return (
            rng.randint(free_rows // 3, 2 * free_rows // 3),
            rng.randint(free_columns // 3, 2 * free_columns // 3),
        )
    return rng.randint(0, free_rows), rng.randint(0, free_columns)


def _ink_colour(
    frames: np.ndarray, under: np.ndarray, ink: np.ndarray, rng: random.Random
) -> tuple[float, tuple[float, ...]]:
    """Grey value and RGB colour of one line: the maximum (most common), a high or a middle level
    of the image's range, or dark, in one of the colours scanners use. The first of that choice,
    white and black whose brightness differs from the pixels under 90% of the ink by a fifth of
    the range is taken (the most legible one when none does)."""
    low, high = float(frames.min()), float(frames.max())
    if frames.dtype != np.uint8 and rng.random() < 0.4:
        high = float(_limits(frames.dtype)[1]) if rng.random() < 0.5 else high
    colours = ((255, 255, 255), (255, 255, 0), (0, 255, 0), (200, 200, 200), (0, 200, 255))
    level = rng.choice((1.0, 1.0, 0.85, 0.65, 0.0))
    candidates = [(level, rng.choice(colours)), (1.0, (255, 255, 255)), (0.0, (255, 255, 255))]
    if frames.ndim == 4:
        background = (under @ np.array([0.299, 0.587, 0.114]))[:, ink] / 255.0
    else:
        background = (under[:, ink] - low) / max(high - low, 1e-9)
    best, best_contrast = candidates[0], -1.0
    for level, colour in candidates:
        brightness = level * (
            np.dot(colour, (0.299, 0.587, 0.114)) / 255.0 if frames.ndim == 4 else 1
        )
        contrast = float(np.percentile(np.abs(background - brightness), 10))
        if contrast >= 0.2:
            best = (level, colour)
            break
        if contrast > best_contrast:
            best, best_contrast = (level, colour), contrast
    level, colour = best
    return low + (high - low) * level, tuple(float(c) * level for c in colour)


def _limits(dtype: np.dtype) -> tuple[float, float]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float(np.finfo(dtype).min), float(np.finfo(dtype).max)


def write_dicom(image: CorpusImage, path: Path, modality: str = "OT") -> None:
    """Write the image as a secondary capture (single- or multi-frame, grey or RGB) with a
    made-up patient, so the de-identification stage reads it as it would a screen grab."""
    frames = image.frames
    rgb = frames.ndim == 4
    pixels = frames if frames.dtype == np.uint8 else _as_uint16(frames)
    meta = FileMetaDataset()
    single = frames.shape[0] == 1 and (rgb or pixels.dtype == np.uint8)
    sop_class = SECONDARY_CAPTURE
    if not single:
        sop_class = MULTIFRAME_TRUE_COLOUR_SC if rgb else MULTIFRAME_GREY_WORD_SC
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image.name, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[image.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[image.name, "series"])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "OCR^CORPUS", "OCR-0001", "19700101"
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "O", "20240101", "120000", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", "1", "1"
    ds.ReferringPhysicianName, ds.Modality, ds.ConversionType = "", modality, "WSD"
    ds.PatientOrientation, ds.Laterality = "", ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if not single:
        ds.NumberOfFrames = frames.shape[0]
        ds.FrameIncrementPointer = 0x00181063 if rgb else 0x00200013
        ds.FrameTime = "33.3"
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _as_uint16(frames: np.ndarray) -> np.ndarray:
    """Deep grey stored unsigned: signed values shifted up by the minimum when negative."""
    values = frames.astype(np.int64)
    if values.min() < 0:
        values = values - values.min()
    return np.clip(values, 0, 65535).astype(np.uint16)

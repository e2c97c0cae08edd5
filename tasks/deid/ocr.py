"""Find burned-in text in one image frame with an offline text detector, and blank what it finds.

The networks are the PP-OCRv4 text detector (a DBNet) and recogniser that the rapidocr-onnxruntime
wheel ships under ``rapidocr_onnxruntime/models``: nothing is downloaded. The detector proposes
boxes; the recogniser then reads each one, and a box is kept only when it reads as at least two
characters with confidence (bone, vessels and Doppler flow make the detector fire, but do not read
as text). What the text says is never kept. The sessions are loaded once per process.

Frames of any depth are windowed to 8 bit before detection. A grey frame is looked at over its
full range and with its local contrast raised (CLAHE); a 16-bit (or float) one also with its
histogram equalised, because annotations drawn at the type's maximum leave anatomy (and text
drawn at the anatomy's level) too faint in the full range. An RGB frame is looked at as it is and
as grey with its local contrast raised. The boxes of every view are merged. Frames larger than
the network's comfortable size are first downscaled (never below half size, to keep small text
legible) and then cut into overlapping tiles.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime

from mira.errors import DeidentificationError

DETECTION_MODEL = "ch_PP-OCRv4_det_infer.onnx"
# Pixels of the network's probability map above this are text; a box whose mean probability is
# under SCORE_THRESHOLD is dropped (the upstream defaults are 0.3 and 0.5).
PIXEL_THRESHOLD = 0.2
SCORE_THRESHOLD = 0.35
# DBNet predicts shrunk text kernels; boxes are grown back by area * ratio / perimeter.
UNCLIP_RATIO = 1.6
# Frames are run whole up to this side; larger ones are downscaled (at most by 2) then tiled.
WHOLE_FRAME_SIDE = 1536
TILE_SIDE = 1024
TILE_OVERLAP = 128
# The detector needs text about 14 pixels high: frames are upscaled (by at most MAX_UPSCALE) until
# their shorter side reaches DETECTION_SIDE, so 7-pixel text in a small frame is read.
DETECTION_SIDE = 800
MAX_UPSCALE = 2.5
RECOGNITION_MODEL = "ch_PP-OCRv4_rec_infer.onnx"
# A proposed box is text when the recogniser reads at least READ_MIN_CHARACTERS characters in it
# with at least READ_MIN_SCORE confidence; a reading shorter than SHORT_READING characters needs
# SHORT_READING_SCORE (vessels and tissue edges read as "18" or "180" at 0.5 to 0.7).
READ_MIN_CHARACTERS = 2
READ_MIN_SCORE = 0.5
SHORT_READING = 4
SHORT_READING_SCORE = 0.8
ALONG_LINE = 0.5


@dataclass(frozen=True)
class TextBox:
    """An axis-aligned text box in frame pixels (``x1``, ``y1`` exclusive) and its detector score."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    def padded(self, pad: int, rows: int, columns: int) -> TextBox:
        """The box grown by ``pad`` pixels on every side, clipped to the frame."""
        return TextBox(
            max(0, self.x0 - pad),
            max(0, self.y0 - pad),
            min(columns, self.x1 + pad),
            min(rows, self.y1 + pad),
            self.score,
        )


def find_text(frame: np.ndarray) -> list[TextBox]:
    """Text boxes in one frame: 2D grey of any integer or float dtype, or HxWx3 RGB uint8."""
    if frame.ndim == 3 and frame.shape[2] == 3:
        colour = _rgb_to_bgr8(frame)
        grey = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
        views: Iterable[np.ndarray] = [colour, np.repeat(_local_contrast(grey)[:, :, None], 3, 2)]
    elif frame.ndim == 2:
        views = (np.repeat(grey[:, :, None], 3, axis=2) for grey in _grey_windows(frame))
    else:
        raise ValueError(f"find_text needs a 2D grey or HxWx3 RGB frame, not shape {frame.shape}")
    if frame.shape[0] < 4 or frame.shape[1] < 4:
        return []
    boxes: list[TextBox] = []
    rows, columns = frame.shape[:2]
    for view in views:
        boxes.extend(
            _along_line(box, rows, columns)
            for box in _detect_scaled(view)
            if _reads_as_text(view, box)
        )
    return _merge(boxes)


def _along_line(box: TextBox, rows: int, columns: int) -> TextBox:
    """The box grown along its line by ALONG_LINE of its thickness on each side: over clutter the
    detector often boxes only part of a line, and the rest of the line is where the text goes on.
    A box 1.5 times taller than wide is a vertical line (a slide label) and grows up and down."""
    width, height = box.x1 - box.x0, box.y1 - box.y0
    if height >= 1.5 * width:
        grow = int(np.ceil(ALONG_LINE * width))
        return TextBox(box.x0, max(0, box.y0 - grow), box.x1, min(rows, box.y1 + grow), box.score)
    grow = int(np.ceil(ALONG_LINE * height))
    return TextBox(max(0, box.x0 - grow), box.y0, min(columns, box.x1 + grow), box.y1, box.score)


def blank_boxes(
    frame: np.ndarray, boxes: Iterable[TextBox], pad: int, fill: int | float = 0
) -> np.ndarray:
    """A copy of ``frame`` with each box, grown by ``pad`` pixels, set to ``fill`` (all samples)."""
    blanked = np.array(frame, copy=True)
    rows, columns = frame.shape[:2]
    for box in boxes:
        grown = box.padded(pad, rows, columns)
        blanked[grown.y0 : grown.y1, grown.x0 : grown.x1, ...] = fill
    return blanked


def warm_up() -> None:
    """Load the networks now (about half a second) rather than on the first frame."""
    _session()
    _recogniser()


def _model_path(name: str) -> str:
    model = Path(str(importlib.resources.files("rapidocr_onnxruntime") / "models" / name))
    if not model.is_file():
        raise DeidentificationError(f"OCR model missing from rapidocr-onnxruntime: {model}")
    return str(model)


@functools.lru_cache(maxsize=1)
def _session() -> onnxruntime.InferenceSession:
    """The detection network, loaded once per process from the model file the wheel ships."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    threads = int(os.environ.get("MIRA_OCR_THREADS", "0"))
    if threads > 0:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        _model_path(DETECTION_MODEL), sess_options=options, providers=["CPUExecutionProvider"]
    )


@functools.lru_cache(maxsize=1)
def _recogniser() -> Any:
    """rapidocr's text recogniser (its CTC decoding and character list) on the shipped model."""
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

    return TextRecognizer(
        {
            "model_path": _model_path(RECOGNITION_MODEL),
            "rec_batch_num": 6,
            "rec_img_shape": [3, 48, 320],
            "use_cuda": False,
            "use_dml": False,
            "intra_op_num_threads": int(os.environ.get("MIRA_OCR_THREADS", "0")) or -1,
            "inter_op_num_threads": -1,
        }
    )


def _reads_as_text(view: np.ndarray, box: TextBox) -> bool:
    """Whether the recogniser reads the box's pixels as text (the reading itself is dropped)."""
    crop = view[box.y0 : box.y1, box.x0 : box.x1]
    if crop.shape[0] < 2 or crop.shape[1] < 2:
        return False
    crops = [crop]
    if crop.shape[0] >= 1.5 * crop.shape[1]:  # a vertical line: read it turned either way
        crops = [np.rot90(crop), np.rot90(crop, -1)]
    readings, _elapsed = _recogniser()([np.ascontiguousarray(c) for c in crops])
    return any(_is_reading(text.replace(" ", ""), float(score)) for text, score in readings)


def _is_reading(text: str, score: float) -> bool:
    """Whether a recogniser output is a confident reading of text (see READ_MIN_* above)."""
    if len(text) < READ_MIN_CHARACTERS:
        return False
    return score >= (SHORT_READING_SCORE if len(text) < SHORT_READING else READ_MIN_SCORE)


def _rgb_to_bgr8(frame: np.ndarray) -> np.ndarray:
    """RGB frames are expected as 8-bit; deeper ones are windowed over their full range."""
    if frame.dtype != np.uint8:
        frame = _window(frame.astype(np.float32), float(frame.min()), float(frame.max()))
    return np.ascontiguousarray(frame[:, :, ::-1])


def _grey_windows(frame: np.ndarray) -> Iterator[np.ndarray]:
    """8-bit views of a grey frame: its full range stretched (a narrow 8-bit range too), its
    local contrast raised, and, when deeper than 8 bits, its equalised histogram."""
    values = frame.astype(np.float32)
    stretched = _window(values, float(values.min()), float(values.max()))
    yield stretched
    if frame.dtype != np.uint8:
        yield _equalised(frame)
    yield _local_contrast(stretched)


def _local_contrast(grey: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation: text only slightly brighter or darker
    than the anatomy or tissue right under it stands out."""
    return np.asarray(cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(grey))


def _equalised(frame: np.ndarray) -> np.ndarray:
    """Each value mapped to its rank among the frame's values (0..255): text at any level
    distinct from what surrounds it stands out, whatever the extremes of the frame."""
    levels, inverse = np.unique(frame, return_inverse=True)
    if len(levels) < 2:
        return np.zeros(frame.shape, np.uint8)
    counts = np.bincount(inverse.ravel(), minlength=len(levels))
    ranks = np.cumsum(counts) - counts
    lut = (ranks * (255.0 / max(1, int(ranks[-1])))).astype(np.uint8)
    return lut[inverse.reshape(frame.shape)]


def _window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to 0..255, clipping outside."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _detect_scaled(image: np.ndarray) -> list[TextBox]:
    """Detect on an 8-bit BGR image of any size, mapping boxes back to its pixels."""
    rows, columns = image.shape[:2]
    scale = 1.0
    if max(rows, columns) > WHOLE_FRAME_SIDE:
        scale = max(0.5, WHOLE_FRAME_SIDE / max(rows, columns))
    elif min(rows, columns) < DETECTION_SIDE:
        scale = min(MAX_UPSCALE, DETECTION_SIDE / min(rows, columns))
        scale = min(scale, WHOLE_FRAME_SIDE / max(rows, columns))
    work = image
    if scale != 1.0:
        size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        work = cv2.resize(image, size, interpolation=interpolation)
    boxes = []
    for top, left, tile in _tiles(work):
        for box in _detect(tile):
            boxes.append(
                TextBox(
                    max(0, int((box.x0 + left) / scale)),
                    max(0, int((box.y0 + top) / scale)),
                    min(columns, int(np.ceil((box.x1 + left) / scale))),
                    min(rows, int(np.ceil((box.y1 + top) / scale))),
                    box.score,
                )
            )
    return boxes


def _tiles(image: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """The image itself when small enough, else overlapping tiles with their offsets."""
    rows, columns = image.shape[:2]
    if max(rows, columns) <= WHOLE_FRAME_SIDE:
        yield 0, 0, image
        return
    step = TILE_SIDE - TILE_OVERLAP
    for top in range(0, max(1, rows - TILE_OVERLAP), step):
        for left in range(0, max(1, columns - TILE_OVERLAP), step):
            yield top, left, image[top : top + TILE_SIDE, left : left + TILE_SIDE]


def _detect(image: np.ndarray) -> list[TextBox]:
    """Run the network on one 8-bit BGR image (padded to a multiple of 32) and box its output."""
    rows, columns = image.shape[:2]
    padded_rows, padded_columns = -(-rows // 32) * 32, -(-columns // 32) * 32
    batch = np.zeros((padded_rows, padded_columns, 3), np.float32)
    batch[:rows, :columns] = image.astype(np.float32) / 127.5 - 1.0
    session = _session()
    (probability,) = session.run(
        None, {session.get_inputs()[0].name: batch.transpose(2, 0, 1)[None]}
    )
    return _boxes_from_map(probability[0, 0, :rows, :columns])


def _boxes_from_map(probability: np.ndarray) -> list[TextBox]:
    """Connected regions of the probability map, scored, filtered and grown back (unclipped)."""
    mask = cv2.dilate((probability > PIXEL_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rows, columns = probability.shape
    boxes = []
    for label in range(1, count):
        left, top, width, height, _area = (int(v) for v in stats[label])
        if min(width, height) < 2:
            continue
        region = labels[top : top + height, left : left + width] == label
        score = float(probability[top : top + height, left : left + width][region].mean())
        if score < SCORE_THRESHOLD:
            continue
        grow = int(np.ceil(width * height * UNCLIP_RATIO / (2 * (width + height))))
        boxes.append(
            TextBox(
                max(0, left - grow),
                max(0, top - grow),
                min(columns, left + width + grow),
                min(rows, top + height + grow),
                score,
            )
        )
    return boxes


def _merge(boxes: list[TextBox]) -> list[TextBox]:
    """Union overlapping boxes (from several windows or tiles) until none overlap."""
    merged = sorted(boxes, key=lambda b: (b.y0, b.x0))
    changed = True
    while changed:
        changed = False
        result: list[TextBox] = []
        for box in merged:
            for index, other in enumerate(result):
                if (
                    box.x0 < other.x1
                    and other.x0 < box.x1
                    and box.y0 < other.y1
                    and other.y0 < box.y1
                ):
                    result[index] = TextBox(
                        min(box.x0, other.x0),
                        min(box.y0, other.y0),
                        max(box.x1, other.x1),
                        max(box.y1, other.y1),
                        max(box.score, other.score),
                    )
                    changed = True
                    break
            else:
                result.append(box)
        merged = result
    return merged

"""Find burned-in text in one image frame with an offline text detector, and blank what it finds.

The detector is the PP-OCRv4 text-detection network (a DBNet) that the rapidocr-onnxruntime wheel
ships under ``rapidocr_onnxruntime/models``: nothing is downloaded, and only detection runs (where
the text is matters, not what it says). The ONNX session is loaded once per process.

Frames of any depth are windowed to 8 bit before detection. A 16-bit (or float) frame is looked at
through more than one window, because annotations are usually drawn at the maximum value and a
full-range window can leave them faint next to bright anatomy or bone: the boxes of every window
are merged. Frames larger than the network's comfortable size are first downscaled (never below
half size, to keep small text legible) and then cut into overlapping tiles.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from mira.errors import DeidentificationError

DETECTION_MODEL = "ch_PP-OCRv4_det_infer.onnx"
# Pixels of the network's probability map above this are text; a box whose mean probability is
# under SCORE_THRESHOLD is dropped (the upstream defaults are 0.3 and 0.5).
PIXEL_THRESHOLD = 0.3
SCORE_THRESHOLD = 0.5
# DBNet predicts shrunk text kernels; boxes are grown back by area * ratio / perimeter.
UNCLIP_RATIO = 1.6
# Frames are run whole up to this side; larger ones are downscaled (at most by 2) then tiled.
WHOLE_FRAME_SIDE = 1536
TILE_SIDE = 1024
TILE_OVERLAP = 128
# Small frames are upscaled so their shorter side reaches this (small text in small frames).
MIN_SIDE = 320
# Windows of a high-bit-depth frame, as (low, high) percentiles of its values; (0, 100) is the
# full range, the others saturate the brightest values where text is usually drawn.
HIGH_DEPTH_WINDOWS = ((0.0, 100.0), (1.0, 99.0), (50.0, 99.9))


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
        views: Iterable[np.ndarray] = [_rgb_to_bgr8(frame)]
    elif frame.ndim == 2:
        views = (np.repeat(grey[:, :, None], 3, axis=2) for grey in _grey_windows(frame))
    else:
        raise ValueError(f"find_text needs a 2D grey or HxWx3 RGB frame, not shape {frame.shape}")
    if frame.shape[0] < 4 or frame.shape[1] < 4:
        return []
    boxes: list[TextBox] = []
    for view in views:
        boxes.extend(_detect_scaled(view))
    return _merge(boxes)


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
    """Load the detector now (about half a second) rather than on the first frame."""
    _session()


@functools.lru_cache(maxsize=1)
def _session() -> onnxruntime.InferenceSession:
    """The detection network, loaded once per process from the model file the wheel ships."""
    model = Path(
        str(importlib.resources.files("rapidocr_onnxruntime") / "models" / DETECTION_MODEL)
    )
    if not model.is_file():
        raise DeidentificationError(f"OCR text-detection model missing: {model}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    threads = int(os.environ.get("MIRA_OCR_THREADS", "0"))
    if threads > 0:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _rgb_to_bgr8(frame: np.ndarray) -> np.ndarray:
    """RGB frames are expected as 8-bit; deeper ones are windowed over their full range."""
    if frame.dtype != np.uint8:
        frame = _window(frame.astype(np.float32), float(frame.min()), float(frame.max()))
    return np.ascontiguousarray(frame[:, :, ::-1])


def _grey_windows(frame: np.ndarray) -> Iterator[np.ndarray]:
    """8-bit views of a grey frame: itself when 8-bit, several windows when deeper."""
    if frame.dtype == np.uint8:
        yield frame
        return
    values = frame.astype(np.float32)
    low_high = np.percentile(values, sorted({p for w in HIGH_DEPTH_WINDOWS for p in w}))
    percentile = dict(
        zip(sorted({p for w in HIGH_DEPTH_WINDOWS for p in w}), low_high, strict=True)
    )
    seen: set[tuple[float, float]] = set()
    for low_p, high_p in HIGH_DEPTH_WINDOWS:
        low, high = float(percentile[low_p]), float(percentile[high_p])
        if high <= low or (low, high) in seen:
            continue
        seen.add((low, high))
        yield _window(values, low, high)


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
    elif min(rows, columns) < MIN_SIDE:
        scale = min(4.0, MIN_SIDE / min(rows, columns))
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

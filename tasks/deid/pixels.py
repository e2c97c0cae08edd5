"""Burned-in text: decide which images may carry it, find it by OCR, and blank it.

An image is suspect when BurnedInAnnotation is YES, when its modality is one the policy lists
(default US, SC, OT, XA, RF, NM), when its SOP class is a secondary capture or ultrasound class
(screens and scanner banners) or when its Image Type says DERIVED or SECONDARY. Every frame of a
suspect image is read by the text detector (:mod:`tasks.deid.ocr`), one frame at a time; the boxes
it finds, padded, are blanked in that frame, and the regions of the policy's most specific rule
(fixed banners) are blanked in every frame. An image in which nothing is blanked keeps its pixel
data bit for bit, unless the policy holds OCR-negative images of its modality for review. With OCR
off, a suspect image needs a region rule or is refused. Every other image is never decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian

from mira.errors import DeidentificationError
from tasks.deid.ocr import blank_boxes, find_text
from tasks.deid.profile import DeidPolicy, ScrubRule
from tasks.deid.walker import peek_text

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)
MODALITY = 0x00080060
MANUFACTURER = 0x00080070
MODEL_NAME = 0x00081090
SOP_CLASS_UID = 0x00080016
BURNED_IN_ANNOTATION = 0x00280301
IMAGE_TYPE = 0x00080008
SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
ULTRASOUND_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6",
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.6.2",
        "1.2.840.10008.5.1.4.1.1.6.3",
        "1.2.840.10008.5.1.4.1.1.3",
        "1.2.840.10008.5.1.4.1.1.3.1",
    }
)


def needs_scrubbing(dataset: Dataset, policy: DeidPolicy) -> bool:
    """Whether the image may carry burned-in text (see the module docstring)."""
    if not any(tag in dataset._dict for tag in PIXEL_TAGS):
        return False
    if peek_text(dataset, BURNED_IN_ANNOTATION).upper() == "YES":
        return True
    if peek_text(dataset, MODALITY).upper() in policy.burned_in_modalities:
        return True
    sop_class = peek_text(dataset, SOP_CLASS_UID)
    if sop_class in SECONDARY_CAPTURE_CLASSES or sop_class in ULTRASOUND_CLASSES:
        return True
    return _derived_picture(dataset)


def _derived_picture(dataset: Dataset) -> bool:
    """A derived or secondary image (a reformat, a screen grab, a fused view) of 8 or more bits
    per sample; 1-bit segmentations and dose grids carry no legible text."""
    image_type = [v.strip().upper() for v in peek_text(dataset, IMAGE_TYPE).split("\\")]
    derived = image_type[0] == "DERIVED" or image_type[1:2] == ["SECONDARY"]
    if not derived or "PixelData" not in dataset:
        return False
    return int(dataset.get("BitsAllocated", 0) or 0) in (8, 16) and not peek_text(
        dataset, MODALITY
    ).upper().startswith(("SEG", "RT"))


def device_of(dataset: Dataset) -> tuple[str, str, str]:
    """Modality, manufacturer and model name: what scrub rules are keyed by."""
    return (
        peek_text(dataset, MODALITY),
        peek_text(dataset, MANUFACTURER),
        peek_text(dataset, MODEL_NAME),
    )


def check_overlays(dataset: Dataset) -> None:
    """Refuse overlays stored in the unused bits of the pixel data: removing the overlay group
    would leave their (possibly textual) bitmap hidden in the pixels."""
    for tag in list(dataset._dict):
        if tag >> 24 == 0x60 and tag & 0xFFFF == 0x0100 and not (tag >> 16) & 1:
            allocated = dataset[tag].value
            if allocated not in (None, b"", 1):
                raise DeidentificationError(
                    f"overlay {tag >> 16:04X} is embedded in the pixel data bits; cannot remove it"
                )


@dataclass(frozen=True)
class PixelScrub:
    """What was blanked in one image: OCR text boxes (and the frames they were in) and the
    regions of a rule, applied to every frame."""

    frames: int
    text_frames: int = 0
    text_boxes: int = 0
    rule_regions: int = 0

    @property
    def changed(self) -> bool:
        """Whether any pixel was blanked (otherwise the pixel data is kept bit for bit)."""
        return self.text_boxes > 0 or self.rule_regions > 0

    def describe(self) -> str:
        """One DeidentificationMethod value (LO, at most 64 characters), with no image content."""
        text = (
            f"OCR blanked {self.text_boxes} text boxes in {self.text_frames}/{self.frames} frames"
        )
        if not self.text_boxes:
            text = f"OCR found no burned-in text in {self.frames} frames"
        if self.rule_regions:
            text += f"; {self.rule_regions} rule regions"
        return text[:64]


def scrub_burned_in(dataset: Dataset, policy: DeidPolicy) -> PixelScrub:
    """Find and blank burned-in text in every frame (see the module docstring), then set
    BurnedInAnnotation to NO. Blanked pixels are stored uncompressed (Explicit VR Little Endian).
    Raises when the image cannot be cleared: no rule with OCR off, pixels that cannot be decoded
    or rewritten, or an OCR-negative image of a modality the policy sends to review."""
    device = device_of(dataset)
    rule = policy.scrub_rule_for(*device)
    if not policy.ocr and rule is None:
        raise DeidentificationError(f"no burned-in text rule for {'/'.join(device)}")
    if "PixelData" not in dataset or int(dataset.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise DeidentificationError("burned-in text in pixel data that mira cannot rewrite")
    result, pixels = _blank_frames(dataset, policy, rule)
    if not result.changed and policy.reviews_ocr_negative(device[0]):
        raise DeidentificationError(
            f"OCR found no burned-in text in this {device[0] or '?'} image; "
            "the profile holds such images for review"
        )
    if result.changed:
        _store_native(dataset, pixels)
    dataset.BurnedInAnnotation = "NO"
    return result


def _blank_frames(
    dataset: Dataset, policy: DeidPolicy, rule: ScrubRule | None
) -> tuple[PixelScrub, bytearray]:
    """Decode one frame at a time, blank its text boxes and the rule's regions, and append it to
    the native (little-endian) output buffer; memory holds one decoded frame plus the output."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    regions = [region.bounds(rows, columns) for region in (rule.regions if rule else ())]
    output = bytearray()
    text_frames = text_boxes = 0
    for frame in _iter_frames(dataset):
        boxes = find_text(frame) if policy.ocr else []
        if boxes:
            text_frames += 1
            text_boxes += len(boxes)
            frame = blank_boxes(frame, boxes, policy.ocr_pad)
        for r0, r1, c0, c1 in regions:
            frame[r0:r1, c0:c1, ...] = 0
        output += frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()
    return PixelScrub(frames, text_frames, text_boxes, len(regions)), output


def _iter_frames(dataset: Dataset) -> Iterator[np.ndarray]:
    """Each frame decoded as a writable array (RGB for colour images), one at a time."""
    try:
        decoder = get_decoder(dataset.file_meta.TransferSyntaxUID)
        if not decoder.is_available:
            raise DeidentificationError(
                f"cannot decode pixel data to scrub it: no decoder for {decoder.UID.name}"
            )
        for frame, _meta in decoder.iter_array(dataset, as_rgb=True):
            yield np.array(frame, copy=True)
    except DeidentificationError:
        raise
    except Exception as err:
        raise DeidentificationError(f"cannot decode pixel data to scrub it: {err}") from err


def _store_native(dataset: Dataset, pixels: bytearray) -> None:
    """Replace the pixel data by the blanked native frames, with matching attributes."""
    vr = "OB" if int(dataset.BitsAllocated) == 8 else "OW"
    value = bytes(pixels) + b"\x00" * (len(pixels) % 2)
    # A new element: the encapsulated one it replaces had an undefined length.
    dataset[PIXEL_DATA] = DataElement(PIXEL_DATA, vr, value)
    for tag in EXTENDED_OFFSET_TABLE:
        dataset._dict.pop(BaseTag(tag), None)
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        dataset.PlanarConfiguration = 0
    if str(dataset.PhotometricInterpretation).startswith("YBR"):
        dataset.PhotometricInterpretation = "RGB"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

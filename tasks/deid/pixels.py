"""Burned-in text: decide which images may carry it, and blank the configured regions.

An image is suspect when BurnedInAnnotation is YES, when its modality is one the policy lists
(default US, SC, OT) or when its SOP class is a secondary capture or ultrasound class (screens and
scanner banners). A suspect image is scrubbed by the most specific rule of the policy, or refused.
Every other image keeps its pixel data bit for bit: it is never decoded.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from mira.errors import DeidentificationError
from tasks.deid.profile import DeidPolicy
from tasks.deid.walker import peek_text

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
MODALITY = 0x00080060
MANUFACTURER = 0x00080070
MODEL_NAME = 0x00081090
SOP_CLASS_UID = 0x00080016
BURNED_IN_ANNOTATION = 0x00280301
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
    return sop_class in SECONDARY_CAPTURE_CLASSES or sop_class in ULTRASOUND_CLASSES


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


def scrub_burned_in(dataset: Dataset, policy: DeidPolicy) -> None:
    """Blank the policy's regions in every frame and store the pixels uncompressed (Explicit VR
    Little Endian), then set BurnedInAnnotation to NO. Raises when no rule applies or the pixel
    encoding cannot be rewritten safely."""
    device = device_of(dataset)
    rule = policy.scrub_rule_for(*device)
    if rule is None:
        raise DeidentificationError(f"no burned-in text rule for {'/'.join(device)}")
    if "PixelData" not in dataset or int(dataset.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise DeidentificationError("burned-in text in pixel data that mira cannot rewrite")
    pixels = _decoded_pixels(dataset)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    for region in rule.regions:
        r0, r1, c0, c1 = region.bounds(rows, columns)
        if frames > 1:
            pixels[:, r0:r1, c0:c1, ...] = 0
        else:
            pixels[r0:r1, c0:c1, ...] = 0
    _store_native(dataset, pixels)


def _decoded_pixels(dataset: Dataset) -> np.ndarray:
    """Decode the pixel data (decompressing in place when encapsulated) as a writable array."""
    try:
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            dataset.decompress(as_rgb=True, generate_instance_uid=False)
        dataset.pixel_array_options(as_rgb=True)
        pixels = np.array(dataset.pixel_array, copy=True)
    except Exception as err:
        raise DeidentificationError(f"cannot decode pixel data to scrub it: {err}") from err
    if str(dataset.PhotometricInterpretation).startswith("YBR"):
        dataset.PhotometricInterpretation = "RGB"
    return pixels


def _store_native(dataset: Dataset, pixels: np.ndarray) -> None:
    """Write the array back as little-endian native pixel data with matching attributes."""
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    dataset.PixelData = little.tobytes()
    dataset["PixelData"].VR = "OB" if int(dataset.BitsAllocated) == 8 else "OW"
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        dataset.PlanarConfiguration = 0
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.BurnedInAnnotation = "NO"

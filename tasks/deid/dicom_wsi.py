"""De-identifying DICOM whole-slide images: which instances of a slide may leave at all.

A VL Whole Slide Microscopy series is de-identified instance by instance by the DICOM engine, like
any series: the keyed pseudonyms give every instance of the slide the same Study, Series and Frame
of Reference UIDs (and concatenation UID), and the frames are copied untouched. What the engine
cannot judge is the picture: the LABEL and OVERVIEW images show the slide's paper label (a
patient's name, a barcode, an accession number) and never leave; a THUMBNAIL is a reduced copy of
the tissue and leaves only when the text detector finds nothing in it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tasks.deid.ocr import find_text
from tasks.ingest import WSI_SOP_CLASS

LABEL_IMAGE = "slide-label-image"  # refusal code: a LABEL or OVERVIEW instance, dropped
THUMBNAIL_TEXT = "slide-thumbnail-text"  # refusal code: a THUMBNAIL showing text, dropped
LABEL_FLAVOURS = ("LABEL", "OVERVIEW")
# Deflated Explicit VR Little Endian: the one transfer syntax whose header is not plain bytes.
DEFLATED = b"1.2.840.10008.1.2.1.99"


def associated_image_refusal(data: bytes) -> tuple[str, str] | None:
    """Why a whole-slide instance must not leave (refusal code, detail), or None: it is no
    whole-slide instance, a pyramid level, or a thumbnail without text."""
    if WSI_SOP_CLASS.encode() not in data and DEFLATED not in data:
        return None  # the class UID is in every whole-slide file's header, unless deflated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    if str(header.get("SOPClassUID", "")) != WSI_SOP_CLASS:
        return None
    image_type = [str(value).upper() for value in header.get("ImageType", [])]
    flavour = image_type[2] if len(image_type) > 2 else ""
    if flavour in LABEL_FLAVOURS:
        return LABEL_IMAGE, (
            f"the {flavour} image of a whole-slide series is dropped: it shows the slide's "
            "label (names, barcodes)"
        )
    if flavour != "THUMBNAIL":
        return None
    try:
        picture = thumbnail_pixels(data)
    except Exception as err:  # a thumbnail that cannot be looked at cannot be cleared
        return THUMBNAIL_TEXT, f"the THUMBNAIL could not be decoded for the text check: {err}"
    boxes = find_text(picture)
    if boxes:
        return THUMBNAIL_TEXT, (
            f"the THUMBNAIL of a whole-slide series shows text ({len(boxes)} region(s)) and is "
            "dropped"
        )
    return None


def thumbnail_pixels(data: bytes) -> np.ndarray:
    """The thumbnail as one RGB (or grey) picture: its frames placed on the total pixel matrix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        frames = np.asarray(dataset.pixel_array)
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    if frame_count == 1:
        frames = frames[None]
    return _assemble(dataset, frames)


def _assemble(dataset: Dataset, frames: np.ndarray) -> np.ndarray:
    if str(dataset.get("DimensionOrganizationType", "")).upper() == "TILED_SPARSE":
        return np.concatenate(list(frames), axis=1)  # side by side: text in any frame is found
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    total_rows = int(dataset.get("TotalPixelMatrixRows", rows) or rows)
    total_columns = int(dataset.get("TotalPixelMatrixColumns", columns) or columns)
    across = -(-total_columns // columns)
    down = -(-total_rows // rows)
    canvas = np.zeros((down * rows, across * columns, *frames.shape[3:]), frames.dtype)
    for index, frame in enumerate(frames[: across * down]):
        top, left = (index // across) * rows, (index % across) * columns
        canvas[top : top + rows, left : left + columns] = frame
    return canvas[:total_rows, :total_columns]

"""Burned-in text found by OCR and blanked: rendered cases on real images from pydicom.

Text is drawn onto real pixels (an ultrasound cine, a 16-bit CT), the images are written as
secondary captures by the OCR test-set module and de-identified with the default profile: the
text must be blanked in every frame, nothing else may change, the clean image must be published
bit for bit, and the output must say what was blanked. Recall and false blanking over the whole
test set are measured in benchmarks/bench_ocr.py, not here.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile

from mira.errors import DeidentificationError
from tasks.deid import DeidPolicy, deidentify_dicom, policy_from_mapping
from tasks.deid.ocr import TextBox, blank_boxes, find_text
from tasks.sample.ocr_corpus import CorpusImage, TextLine, write_dicom

KEY = b"0123456789abcdef0123456789abcdef"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def draw(frames: np.ndarray, text: str, left: int, baseline: int, value: float) -> TextLine:
    """Draw one line of Hershey text on every frame (in place); return its ink bounding box."""
    ink = np.zeros(frames.shape[1:3], np.uint8)
    cv2.putText(ink, text, (left, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_AA)
    mask = ink > 127
    frames[:, mask] = value
    rows, columns = np.nonzero(mask)
    return TextLine(
        0, int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1
    )


def ultrasound_cine(frames: int = 3) -> np.ndarray:
    """A few frames of pydicom's ultrasound cine, cropped to the sector (no text of its own)."""
    dataset = pydicom.dcmread(TEST_FILES / "examples_ybr_color.dcm")
    dataset.pixel_array_options(as_rgb=True)
    return np.ascontiguousarray(np.asarray(dataset.pixel_array)[:frames, 35:210, 45:285])


def ct_slice() -> np.ndarray:
    """pydicom's 16-bit CT slice (signed, 12 bits stored)."""
    return np.asarray(pydicom.dcmread(TEST_FILES / "CT_small.dcm").pixel_array)[None]


def deidentify(image: CorpusImage, tmp_path: Path, policy: DeidPolicy | None = None) -> tuple:
    path = tmp_path / f"{image.name}.dcm"
    write_dicom(image, path)
    result = deidentify_dicom(path.read_bytes(), KEY, policy or DeidPolicy.default())
    return pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(result.data)), result


def frames_of(dataset: pydicom.Dataset) -> np.ndarray:
    shape = (int(dataset.Rows), int(dataset.Columns), int(dataset.SamplesPerPixel))
    return np.asarray(dataset.pixel_array).reshape((-1, *shape))


def test_text_in_a_cine_is_blanked_in_every_frame_and_nothing_else_changes(tmp_path: Path) -> None:
    frames = ultrasound_cine()
    lines = [
        draw(frames, "DOE^JANE", 8, 20, 255),
        draw(frames, "MRN 4471902", 110, 160, 255),
    ]
    image = CorpusImage("cine", "pydicom", frames, tuple(lines))
    before, after, result = deidentify(image, tmp_path)
    pixels_before, pixels_after = frames_of(before), frames_of(after)
    assert pixels_after.shape == pixels_before.shape == (3, 175, 240, 3)
    assert result.scrubbed_pixels and result.text_frames == 3 and result.text_boxes >= 6
    changed = np.any(pixels_after != pixels_before, axis=-1)
    for index in range(3):
        for line in lines:
            ink = pixels_before[index, line.y0 : line.y1, line.x0 : line.x1]
            assert ink.max() == 255  # the text was there
            assert not pixels_after[index, line.y0 : line.y1, line.x0 : line.x1].any()
        # only pixels near the two lines were touched (boxes padded by the profile's margin)
        near = np.zeros(changed.shape[1:], bool)
        for line in lines:
            near[max(0, line.y0 - 20) : line.y1 + 20, max(0, line.x0 - 20) : line.x1 + 20] = True
        assert not changed[index][~near].any()
    assert after.BurnedInAnnotation == "NO"
    assert after.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    method = list(after.DeidentificationMethod)
    assert method[1] == f"OCR blanked {result.text_boxes} text boxes in 3/3 frames"
    assert "113101" in {item.CodeValue for item in after.DeidentificationMethodCodeSequence}


def test_clean_image_is_published_bit_for_bit(tmp_path: Path) -> None:
    image = CorpusImage("clean-cine", "pydicom", ultrasound_cine(2), ())
    before, after, result = deidentify(image, tmp_path)
    assert not result.scrubbed_pixels and result.text_boxes == 0
    assert after.PixelData == before.PixelData
    assert after.BurnedInAnnotation == "NO"
    assert list(after.DeidentificationMethod)[1] == "OCR found no burned-in text in 2 frames"
    assert "113101" not in {item.CodeValue for item in after.DeidentificationMethodCodeSequence}


def test_profile_can_hold_ocr_negative_images_for_review(tmp_path: Path) -> None:
    image = CorpusImage("clean-ct", "pydicom", ct_slice(), ())
    policy = policy_from_mapping({"ocr_negative_review": ["ot"]})
    with pytest.raises(DeidentificationError, match="no burned-in text in this OT image"):
        deidentify(image, tmp_path, policy)


def test_sixteen_bit_text_at_the_type_maximum_is_blanked(tmp_path: Path) -> None:
    frames = ct_slice()
    line = draw(frames, "SMITH^WEI", 10, 118, 32767)
    image = CorpusImage("ct-text", "pydicom", frames, (line,))
    before, after, result = deidentify(image, tmp_path)
    assert result.scrubbed_pixels and result.text_frames == 1
    original = before.pixel_array
    blanked = after.pixel_array
    assert original[line.y0 : line.y1, line.x0 : line.x1].max() == 32767
    assert blanked[line.y0 : line.y1, line.x0 : line.x1].max() == 0
    assert np.array_equal(blanked[:90], original[:90])  # the anatomy above the text is kept


def test_find_text_on_grey_of_any_depth_and_blank_boxes_pads_and_clips() -> None:
    frame = np.zeros((120, 200), np.float32)
    line = draw(frame[None], "ST MARY HOSP", 20, 60, 1.0)
    boxes = find_text(frame * 0.003)  # a float frame with a tiny range is windowed first
    assert len(boxes) == 1
    box = boxes[0]
    assert box.x0 <= line.x0 and box.y0 <= line.y0 and box.x1 >= line.x1 and box.y1 >= line.y1
    assert find_text(np.zeros((120, 200), np.uint16)) == []
    blanked = blank_boxes(np.ones((10, 10, 3), np.uint8), [TextBox(0, 8, 3, 9, 1.0)], pad=2)
    assert blanked[:, :, 0].sum() == 100 - 5 * 4  # rows 6..9, columns 0..4, clipped at the edge
    with pytest.raises(ValueError, match="2D grey or HxWx3"):
        find_text(np.zeros((2, 8, 8), np.uint8))


def test_profile_ocr_keys_are_checked() -> None:
    assert policy_from_mapping({"ocr": False}).ocr is False
    assert policy_from_mapping({"ocr_pad": 8}).ocr_pad == 8
    assert dataclasses.replace(
        DeidPolicy.default(), ocr_negative_review=frozenset({"*"})
    ).reviews_ocr_negative("CT")
    for bad in ({"ocr": "yes"}, {"ocr_pad": 2.5}, {"ocr_pad": 100}):
        with pytest.raises(Exception, match="ocr"):
            policy_from_mapping(bad)


def test_handwritten_vertical_label_of_a_real_slide_is_found() -> None:
    """The SVS fixture's label photograph carries 'CMU-1' written top to bottom by hand."""
    slide = Path(__file__).parent / "fixtures" / "cmu_small_region.svs"
    with tifffile.TiffFile(slide) as tiff:
        label = np.asarray(tiff.pages[2].asarray())[:, :, :3]
    boxes = find_text(label)
    assert len(boxes) == 1
    box = boxes[0]
    assert box.y1 - box.y0 > 2 * (box.x1 - box.x0)  # one vertical line, grown along itself
    assert box.y1 - box.y0 > 0.8 * label.shape[0]

"""Where a DICOM instance's frames lie in its file, found from its pixel data's item headers.

Uncompressed frames follow each other at a fixed size; encapsulated ones are items of the Pixel
Data sequence, usually one fragment per frame, else grouped by the Basic Offset Table. Only item
headers are read (8 bytes per fragment), never a frame, and a frame or fragment running past the
end of the file is ``truncated``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, BinaryIO

from tasks.ingest.inspection import RejectedObject

if TYPE_CHECKING:
    from tasks.ingest.dicom_series import WsiInstance

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
# A frame as the byte spans of its fragments in the file: one span, except for a JPEG 2000 or
# JPEG frame split over several fragments (the Basic Offset Table then says which belong together)
FrameSpans = tuple[tuple[int, int], ...]


def frame_spans(
    stream: BinaryIO, start: int, instance: WsiInstance, implicit: bool
) -> list[FrameSpans]:
    """The byte spans of each frame of ``instance``, from its pixel data element at ``start``
    (the offset of its tag)."""
    stream.seek(start)
    head = stream.read(12 if not implicit else 8)
    if head[:4] != PIXEL_DATA_TAG:
        raise RejectedObject("missing-attribute", "a whole-slide image without Pixel Data")
    length = struct.unpack("<I", head[8:12] if not implicit else head[4:8])[0]
    value_start = start + len(head)
    size = stream.seek(0, 2)
    if instance.codec is None:
        frame_bytes = instance.tile_rows * instance.tile_columns * instance.samples
        frame_bytes *= instance.bits_allocated // 8
        needed = frame_bytes * instance.frames
        if length == UNDEFINED_LENGTH or length < needed or value_start + needed > size:
            raise RejectedObject(
                "truncated",
                f"{instance.frames} frames of {frame_bytes} bytes do not fit the pixel data",
            )
        return [((value_start + i * frame_bytes, frame_bytes),) for i in range(instance.frames)]
    if length != UNDEFINED_LENGTH:
        raise RejectedObject("unreadable", "compressed frames that are not encapsulated")
    offsets, fragments = _fragments(stream, value_start, size)
    return _group_fragments(instance, offsets, fragments)


def _fragments(stream: BinaryIO, start: int, size: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The Basic Offset Table and every fragment's (offset, length), walking item headers."""
    stream.seek(start)
    tag, length = _item_header(stream, size)
    if tag != ITEM_TAG:
        raise RejectedObject("unreadable", "encapsulated pixel data without an offset table")
    table = stream.read(length)
    offsets = list(struct.unpack(f"<{length // 4}I", table)) if length else []
    position = start + 8 + length
    fragments: list[tuple[int, int]] = []
    while True:
        tag, length = _item_header(stream, size)
        if tag == SEQUENCE_DELIMITER_TAG:
            return offsets, fragments
        if tag != ITEM_TAG or position + 8 + length > size:
            raise RejectedObject(
                "truncated", f"pixel data fragment {len(fragments)} runs past the end of the file"
            )
        fragments.append((position + 8, length))
        position += 8 + length
        stream.seek(position)


def _item_header(stream: BinaryIO, size: int) -> tuple[int, int]:
    head = stream.read(8)
    if len(head) < 8:
        raise RejectedObject("truncated", "the pixel data ends before its sequence delimiter")
    group, element, length = struct.unpack("<HHI", head)
    return (group << 16) | element, length


def _group_fragments(
    instance: WsiInstance, offsets: list[int], fragments: list[tuple[int, int]]
) -> list[FrameSpans]:
    """One frame per fragment, or (when there are more fragments) as the offset table says."""
    if len(fragments) == instance.frames:
        return [(fragment,) for fragment in fragments]
    if len(fragments) < instance.frames or len(offsets) != instance.frames:
        raise RejectedObject(
            "incomplete-slide",
            f"instance {instance.sop_instance_uid} declares {instance.frames} frames but its "
            f"pixel data holds {len(fragments)} fragments",
        )
    # Offsets count from the first fragment's item tag, 8 bytes before its data.
    first = fragments[0][0] - 8
    starts = {offset - 8 - first: index for index, (offset, _) in enumerate(fragments)}
    if offsets[0] != 0 or any(offset not in starts for offset in offsets):
        raise RejectedObject("unreadable", "the offset table points between fragments")
    bounds = [starts[offset] for offset in offsets] + [len(fragments)]
    return [tuple(fragments[bounds[i] : bounds[i + 1]]) for i in range(instance.frames)]

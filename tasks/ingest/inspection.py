"""What ingest learns about one dropped object: its format, header attributes, or why it was refused.

Small frozen records shared by the format sniffer, the DICOM and slide checks and the ingest task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mira.errors import InvalidInput

if TYPE_CHECKING:
    from tasks.ingest.dicom_series import WsiInstance

RejectReason = Literal[
    "truncated",
    "unreadable",
    "missing-attribute",
    "checksum-mismatch",
    "unsupported-type",
    "empty-file",
    "duplicate-uid-conflict",
    "not-in-manifest",
    "invalid-pyramid",
    "size-mismatch",
    "decompression-bomb",
    "not-a-regular-file",
    "invalid-name",
    "patient-link-not-slide",
    "incomplete-slide",
]
DetectedFormat = Literal["dicom", "dicom-no-preamble", "tiff", "bigtiff", "svs", "empty", "unknown"]
ObjectKind = Literal["dicom", "slide"]

DETAIL_CHARS = 400
DEFAULT_MAX_DECODED_BYTES = 1024**3  # the most bytes one check may decode (a tile, a data set)


@dataclass(frozen=True)
class Rejection:
    """Why an object cannot be ingested: a reason code for machines, a sentence for people."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class DicomHeader:
    """The DICOM attributes later stages rely on, read from the header without pixels."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    rows: int | None
    columns: int | None
    frames: int | None
    transfer_syntax: str
    burned_in_annotation: str | None


@dataclass(frozen=True)
class SlideHeader:
    """The pyramid of a whole-slide TIFF: level-0 size, level count, resolution, vendor."""

    width: int
    height: int
    levels: int
    mpp: float | None
    vendor: str


@dataclass(frozen=True)
class Inspection:
    """What one object turned out to be; ``rejection`` is set when it must be quarantined."""

    sha256: str
    size: int
    detected_format: DetectedFormat
    dicom: DicomHeader | None = None
    slide: SlideHeader | None = None
    rejection: Rejection | None = None
    wsi: WsiInstance | None = None  # a DICOM whole-slide instance: its part of the slide

    @property
    def kind(self) -> ObjectKind | None:
        """``dicom`` or ``slide`` for an acceptable object, None for a rejected one."""
        if self.rejection is not None:
            return None
        if self.dicom is not None:
            return "dicom"
        return "slide" if self.slide is not None else None


class RejectedObject(InvalidInput):
    """Raised inside an inspection to stop at the first defect; becomes a ``Rejection``."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail[:DETAIL_CHARS])

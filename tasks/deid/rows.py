"""Catalog rows of de-identified objects, read from the OUTPUT (never from the PHI input)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mira import __version__
from tasks.deid.dicom import DicomDeidResult
from tasks.deid.profile import DeidPolicy
from tasks.deid.slide import SlideDeidResult


def instance_row(
    batch: str,
    key: str,
    result: DicomDeidResult,
    size: int,
    sha256: str,
    policy: DeidPolicy,
    output: Dataset | None = None,
) -> dict[str, Any]:
    """One ``instances`` row (tasks.dataset.catalog.INSTANCE_SCHEMA) for a de-identified DICOM
    file; ``output`` is ``result.data`` already read back, when the caller has it."""
    ds = (
        output
        if output is not None
        else pydicom.dcmread(io.BytesIO(result.data), stop_before_pixels=True)
    )
    spacing = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))
    return {
        "batch": batch,
        "key": key,
        "bytes": size,
        "sha256": sha256,
        "patient_id": result.patient_id,
        "study_uid": result.study_uid,
        "series_uid": result.series_uid,
        "sop_instance_uid": result.sop_instance_uid,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "modality": result.modality,
        "body_part": _text(ds, "BodyPartExamined"),
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "study_date": _text(ds, "StudyDate"),
        "pixel_spacing_row": spacing[0] if len(spacing) == 2 else None,
        "pixel_spacing_col": spacing[1] if len(spacing) == 2 else None,
        "slice_thickness": _float(ds.get("SliceThickness")),
        "slice_position": slice_position(ds),
        "rows": _int(ds.get("Rows")),
        "columns": _int(ds.get("Columns")),
        "frames": _int(ds.get("NumberOfFrames")) or 1,
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "patient_identity_removed": _text(ds, "PatientIdentityRemoved"),
        "pixels_scrubbed": result.scrubbed_pixels,
        "deid_profile": f"{policy.name} v{policy.version}",
        "mira_version": __version__,
    }


def slide_row(
    batch: str,
    key: str,
    result: SlideDeidResult,
    shape: tuple[int, int],
    size: int,
    sha256: str,
    policy: DeidPolicy,
    patient_id: str = "",
) -> dict[str, Any]:
    """One ``slides`` row (tasks.dataset.catalog.SLIDE_SCHEMA) for a de-identified slide;
    ``patient_id`` is the linked patient's pseudonym, empty when the upload named none."""
    return {
        "batch": batch,
        "key": key,
        "bytes": size,
        "sha256": sha256,
        "slide_id": result.slide_id,
        "patient_id": patient_id,
        "width": shape[1],
        "height": shape[0],
        "levels": result.levels,
        "mpp": result.mpp,
        "magnification": result.magnification,
        "vendor": result.vendor,
        "deid_profile": f"{policy.name} v{policy.version}",
        "mira_version": __version__,
    }


def slice_position(ds: Dataset) -> float | None:
    """Position of the slice along its normal (mm): what slice spacing is measured on."""
    position = _floats(ds.get("ImagePositionPatient"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    if len(position) != 3 or len(orientation) != 6:
        return _float(ds.get("SliceLocation"))
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, position))


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None

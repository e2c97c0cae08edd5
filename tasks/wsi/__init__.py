"""Whole-slide images to OME-Zarr pyramids: read a slide's tiles, plan the pyramid, encode shards, publish.

The public face of the wing; ``convert`` drives ``source`` (reading), ``pyramid`` (geometry and
means), ``regions`` (the work units), ``ngff`` (metadata and publishing) and ``jpeg`` (the
passthrough codec).
"""

from tasks.wsi.catalog_rows import catalog_pyramids
from tasks.wsi.convert import (
    ConversionResult,
    ConvertOptions,
    convert_pending_slides,
    convert_slide,
)
from tasks.wsi.dicom_out import DicomSlideOut, write_dicom_slide
from tasks.wsi.record import CompletionRecord

__all__ = [
    "CompletionRecord",
    "ConversionResult",
    "ConvertOptions",
    "DicomSlideOut",
    "catalog_pyramids",
    "convert_pending_slides",
    "convert_slide",
    "write_dicom_slide",
]

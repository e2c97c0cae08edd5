"""Whole-slide images to OME-Zarr pyramids: read a slide's tiles, plan the pyramid, encode shards, publish.

The public face of the wing; ``convert`` drives ``source`` (reading), ``pyramid`` (geometry and
means), ``regions`` (the work units), ``ngff`` (metadata and publishing) and ``jpeg`` (the
passthrough codec).
"""

from tasks.wsi.convert import (
    ConversionResult,
    ConvertOptions,
    convert_pending_slides,
    convert_slide,
)

__all__ = [
    "ConversionResult",
    "ConvertOptions",
    "convert_pending_slides",
    "convert_slide",
]

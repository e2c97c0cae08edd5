"""The catalog's ``pyramids`` table: one part per slide, naming its pyramid and what it was made from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage import Store
from tasks.dataset import write_part
from tasks.layout import DICOM, dicom_slide_id, slide_id_of
from tasks.wsi.convert import ConversionResult


def pyramid_row(result: ConversionResult) -> dict[str, Any]:
    """The catalog row of one pyramid."""
    return {
        "slide_key": result.source_key,
        "pyramid_key": result.pyramid_key,
        "source_sha256": result.source_sha256,
        "levels": result.levels,
        "height": result.shape[0],
        "width": result.shape[1],
        "mpp": result.mpp,
    }


def catalog_pyramids(research: Store, results: Iterable[ConversionResult]) -> None:
    """Record each pyramid in its slide's part of ``pyramids`` (a rerun rewrites the same row)."""
    for result in results:
        write_part(research, "pyramids", _slide_id(result.source_key), [pyramid_row(result)])


def _slide_id(source_key: str) -> str:
    """A slide file's id, or a DICOM whole-slide series' (its Series Instance UID)."""
    if source_key.startswith(f"{DICOM}/"):
        return dicom_slide_id(source_key)
    return slide_id_of(source_key)

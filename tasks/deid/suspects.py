"""Outputs the leak scan flags are held for a person, never published unseen, and never hold up
the rest of their batch.

A flagged file's input goes to the quarantine as ``phi-suspect``, its reason naming the attribute
paths the scan flagged (never a value). Its staged de-identified output is kept beside it on the
PHI side (``<quarantined>.deidentified.dcm`` or ``.tiff``), with the catalog row it would have had,
until ``mira quarantine release`` publishes it exactly as staged or ``drop`` discards it
(:mod:`tasks.deid.queue`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import pydicom
import tifffile

PHI_SUSPECT = "phi-suspect"
STAGED_SUFFIX = ".deidentified"
SHOWN_PATHS = 20


def staged_key(quarantined: str, research_key: str) -> str:
    """Where the held output of the input quarantined at ``quarantined`` is kept."""
    return quarantined + STAGED_SUFFIX + PurePosixPath(research_key).suffix


def suspect_detail(attributes: Sequence[str]) -> str:
    """The reason's sentence: where the scan found identifiers, never what it found."""
    shown = ", ".join(attributes[:SHOWN_PATHS])
    if len(attributes) > SHOWN_PATHS:
        shown += f" and {len(attributes) - SHOWN_PATHS} more"
    return (
        f"identifiers of the input found in the de-identified output at {shown}; the output is "
        "held for review and nothing of it was published"
    )


def suspect_fields(
    attributes: Sequence[str],
    research_key: str,
    staged: str,
    row: dict[str, Any],
    kind: str,
    publish_to: str = "",
) -> dict[str, Any]:
    """The reason record's fields a release needs: the output as staged, its SHA-256, its key
    and catalog row in the research store, and (for ``mira deid``) the folder it belongs in."""
    return {
        "attributes": list(attributes),
        "research_key": research_key,
        "staged_key": staged,
        "staged_sha256": row.get("sha256", ""),
        "kind": kind,
        "row": row,
        "publish_to": publish_to,
    }


def attribute_paths(locations: Sequence[str]) -> list[str]:
    """Each flagged place once, in the order the scan found them."""
    return list(dict.fromkeys(locations))


def flagged_values(
    data: bytes, attributes: Sequence[str], research_key: str
) -> list[tuple[str, str]]:
    """Each flagged place with what the held output holds there, for a reviewer on the PHI side:
    a DICOM attribute's value (``(0008,1110)[0].(0008,1155)``), a slide page's tag, the bytes
    around a raw hit (``bytes@N``), or the output's key (``path``)."""
    return [(place, _value_at(data, place, research_key)[:VALUE_CHARS]) for place in attributes]


VALUE_CHARS = 240
_STEP = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)(?:\[(\d+)\])?")


def _value_at(data: bytes, place: str, research_key: str) -> str:
    if place == "path":
        return research_key
    if place.startswith(("bytes@", "text@")):
        offset = int(place.partition("@")[2])
        return repr(data[max(0, offset - 16) : offset + 48])
    try:
        if place.startswith("page["):
            return _tiff_value(data, place)
        return _dicom_value(data, place)
    except Exception as err:  # the place names what the scan saw: say why it is not readable
        return f"<not readable: {err}>"


def _dicom_value(data: bytes, place: str) -> str:
    node: Any = pydicom.dcmread(io.BytesIO(data), force=True)
    for step in place.split("."):
        match = _STEP.fullmatch(step)
        if match is None:
            return f"<not an attribute path: {place}>"
        group, element, index = match.groups()
        tag = (int(group, 16) << 16) | int(element, 16)
        if tag >> 16 == 0x0002:
            node = node.file_meta
        element_value = node[tag].value
        node = element_value[int(index)] if index is not None else element_value
    return str(node)


def _tiff_value(data: bytes, place: str) -> str:
    page_part, _, name = place.partition(".")
    index = int(page_part.removeprefix("page[").removesuffix("]"))
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[index]
        assert isinstance(page, tifffile.TiffPage)
        return str(page.tags[name].value)

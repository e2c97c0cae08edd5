"""``mira phi-scan``: search every output byte and key for the identifiers found in the inputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import PurePosixPath

from storage import Store
from tasks.deid import PhiHit, collect_identifiers, scan_for_phi
from tasks.sniff import sniff_format

log = logging.getLogger(__name__)
SCANNABLE = frozenset({"dicom", "dicom-no-preamble", "tiff", "bigtiff", "svs"})


def input_identifiers(
    inputs: Store, progress: Callable[[int, int], None] | None = None
) -> set[str]:
    """Identifiers of every DICOM file and slide below ``inputs``, plus their path names."""
    objects = list(inputs.list())
    found: set[str] = set()
    for done, info in enumerate(objects, 1):
        data = inputs.read_bytes(info.key)
        if sniff_format(data[:4096]) in SCANNABLE:
            try:
                found |= collect_identifiers(data)
            except Exception as err:  # an unreadable input has no identifiers to offer
                log.warning("cannot read identifiers of %s: %s", inputs.url_of(info.key), err)
        path = PurePosixPath(info.key)
        found |= set(path.parts[:-1]) | {path.stem}
        if progress:
            progress(done, len(objects))
    return found


def scan_outputs(
    outputs: Store, identifiers: set[str], progress: Callable[[int, int], None] | None = None
) -> list[PhiHit]:
    """Every place an identifier occurs in an output object's key or content."""
    objects = list(outputs.list())
    hits: list[PhiHit] = []
    for done, info in enumerate(objects, 1):
        hits += scan_for_phi([(info.key, outputs.read_bytes(info.key))], identifiers)
        if progress:
            progress(done, len(objects))
    return hits

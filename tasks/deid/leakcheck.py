"""``mira phi-scan``: search every output byte and key for the identifiers found in the inputs."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable

from storage import Store
from tasks.deid.names import path_identifiers
from tasks.deid.phiscan import PhiHit, collect_identifiers, scan_for_phi, scan_slide_file
from tasks.ingest import sniff_format

log = logging.getLogger(__name__)
CHUNK_BYTES = 8 * 1024 * 1024
SCANNABLE = frozenset({"dicom", "dicom-no-preamble", "tiff", "bigtiff", "svs"})


def input_identifiers(
    inputs: Store, progress: Callable[[int, int], None] | None = None
) -> set[str]:
    """Identifiers of every DICOM file and slide below ``inputs``, plus their path names (the
    structural ones excepted, see :mod:`tasks.deid.names`)."""
    objects = list(inputs.list())
    found: set[str] = set()
    for done, info in enumerate(objects, 1):
        data = inputs.read_bytes(info.key)
        if sniff_format(data[:4096]) in SCANNABLE:
            try:
                found |= collect_identifiers(data)
            except Exception as err:  # an unreadable input has no identifiers to offer
                log.warning("cannot read identifiers of %s: %s", inputs.url_of(info.key), err)
        found |= path_identifiers(info.key)
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
        hits += scan_object(outputs, info.key, identifiers)
        if progress:
            progress(done, len(objects))
    return hits


def scan_object(outputs: Store, key: str, identifiers: set[str]) -> list[PhiHit]:
    """One output: slides are scanned from a file in bounded memory, the rest in memory."""
    with outputs.open_read(key) as stream:
        head = stream.read(4096)
        if sniff_format(head) not in ("tiff", "bigtiff", "svs"):
            return scan_for_phi([(key, head + stream.read())], identifiers)
        if outputs.is_local:
            return scan_slide_file(key, outputs.filesystem_path(key), identifiers)
        with tempfile.NamedTemporaryFile(prefix="mira-scan-") as copy:
            copy.write(head)
            shutil.copyfileobj(stream, copy, CHUNK_BYTES)
            copy.flush()
            return scan_slide_file(key, copy.name, identifiers)

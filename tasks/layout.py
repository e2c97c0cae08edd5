"""Where things live in the two stores: every key prefix and every rule that turns one key into another.

The gateway (PHI side) holds the drop zone, the quarantine, ingest records and the sensor's
announcements; the research store (de-identified only) holds DICOM instances, slides, pyramids,
the catalog, quality results, the review queue and snapshots. A stage builds or parses a key only
through this module, so the writer of a key and its readers cannot disagree.
"""

from __future__ import annotations

import re

from mira.errors import InvalidInput
from storage import join_key

# Gateway
DROPZONE = "dropzone"
QUARANTINE = "quarantine"
REASON_SUFFIX = ".reason.json"
INGEST = "ingest"
DEID = "deid"
ANNOUNCEMENTS = "events/batch-ready"
RUN_CLAIMS = "runs"  # runs/<batch>/<stage>/<generation>.json: which run holds a batch

# Research store
DICOM = "dicom"
SLIDES = "slides"
SLIDE_SUFFIX = ".tiff"
PYRAMIDS = "pyramids"
PYRAMID_SUFFIX = ".ome.zarr"
CATALOG = "catalog"
QUALITY = "quality"
DATA_DOCS = "quality/data_docs"
REVIEW = "review"
THUMBNAILS = "review/thumbnails"
SNAPSHOTS = "snapshots"
SNAPSHOT_INDEX = "snapshots/_index"  # no snapshot name starts with "_"
REPLICATION = "replication"  # replication/<target>/...: claims and progress, never replicated

_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def instance_key(patient_id: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """``dicom/<patient>/<study>/<series>/<instance>.dcm`` of a de-identified instance."""
    return join_key(DICOM, patient_id, study_uid, series_uid, f"{sop_instance_uid}.dcm")


def slide_key(slide_id: str) -> str:
    """``slides/<slide>.tiff`` of a de-identified slide."""
    return join_key(SLIDES, f"{slide_id}{SLIDE_SUFFIX}")


def slide_id_of(key: str) -> str:
    """The slide id of ``slides/<slide>.tiff``; anything else is not a research slide."""
    folder, _, name = key.rpartition("/")
    if folder != SLIDES or not name.endswith(SLIDE_SUFFIX) or name == SLIDE_SUFFIX:
        raise InvalidInput(f"{key!r} is not a research slide key ({SLIDES}/<slide>{SLIDE_SUFFIX})")
    return name.removesuffix(SLIDE_SUFFIX)


def pyramid_key(slide: str) -> str:
    """``slides/<slide>.tiff`` -> ``pyramids/<slide>.ome.zarr``, the one rule for every stage."""
    return join_key(PYRAMIDS, f"{slide_id_of(slide)}{PYRAMID_SUFFIX}")


def dicom_slide_id(series_folder: str) -> str:
    """The slide id of a DICOM whole-slide series ``dicom/<patient>/<study>/<series>``: its
    (pseudonymised) Series Instance UID."""
    parts = series_folder.strip("/").split("/")
    if len(parts) != 4 or parts[0] != DICOM or not all(parts):
        raise InvalidInput(
            f"{series_folder!r} is not a research DICOM series ({DICOM}/<patient>/<study>/<series>)"
        )
    return parts[3]


def dicom_pyramid_key(series_folder: str) -> str:
    """``dicom/<patient>/<study>/<series>`` -> ``pyramids/<series>.ome.zarr``: a DICOM
    whole-slide series' pyramid."""
    return join_key(PYRAMIDS, f"{dicom_slide_id(series_folder)}{PYRAMID_SUFFIX}")


def quarantine_key(batch: str, path: str) -> str:
    """The quarantined copy of ``path`` (relative to its batch) on the gateway."""
    return join_key(QUARANTINE, batch, path)


def reason_key(quarantined: str) -> str:
    """The machine-readable reason record beside a quarantined copy."""
    return quarantined + REASON_SUFFIX


def quality_prefix(batch: str) -> str:
    """``quality/<batch>``: a batch's validation document and GX results."""
    return join_key(QUALITY, batch)


def check_snapshot_name(name: str) -> str:
    """A snapshot name is one path segment of letters, digits, ``.``, ``_`` and ``-``."""
    if not _SNAPSHOT_NAME.match(name):
        raise InvalidInput(f"invalid snapshot name {name!r}: use letters, digits, '.', '_', '-'")
    return name


def snapshot_folder(name: str) -> str:
    """``snapshots/<name>``, the folder of a snapshot's manifest, card and export."""
    return join_key(SNAPSHOTS, check_snapshot_name(name))


def snapshot_index_key(name: str) -> str:
    """``snapshots/_index/<name>.json``, the locked record of which versions are the snapshot."""
    return join_key(SNAPSHOT_INDEX, f"{check_snapshot_name(name)}.json")

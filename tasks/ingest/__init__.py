"""Ingest: a drop-zone batch checked object by object into an accepted list and a quarantine.

The public face of the wing; ``stage`` runs a batch, ``dropzone`` reads batches and manifests,
``sniff`` and ``dicom_header`` inspect objects, ``quarantine_zone`` records refusals with a reason,
``announce`` is the sensor's claim/emit/mark protocol and ``redact`` keeps object names on the
gateway.
"""

import importlib
from typing import TYPE_CHECKING, Any

from tasks.ingest.announce import BATCH_READY, Announcement, announce_batch, pending_batches
from tasks.ingest.dicom_series import (
    WSI_SOP_CLASS,
    FrameSpans,
    WsiInstance,
    WsiLevel,
    WsiSeries,
    check_wsi_series,
    read_wsi_instance,
)
from tasks.ingest.dropzone import BatchRef, find_ready_batches
from tasks.ingest.preflight import check_pipeline_inputs
from tasks.ingest.quarantine_zone import QuarantineEntry, quarantine, write_reason
from tasks.ingest.redact import GatewayNames, gateway_names_hidden
from tasks.ingest.runs import ClaimOutcome, RunClaim, claim_batch_run
from tasks.ingest.sniff import sniff_format

if TYPE_CHECKING:
    from tasks.ingest.stage import IngestResult, ingest_batch, read_accepted

# The stage loads the catalog (pyarrow, DuckDB): imported on first use of one of its names, so
# a command that only sniffs or quarantines (mira deid) does not pay for it.
_LAZY = {"IngestResult": "tasks.ingest.stage", "ingest_batch": "tasks.ingest.stage"}
_LAZY["read_accepted"] = "tasks.ingest.stage"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "BATCH_READY",
    "WSI_SOP_CLASS",
    "Announcement",
    "BatchRef",
    "ClaimOutcome",
    "FrameSpans",
    "GatewayNames",
    "IngestResult",
    "QuarantineEntry",
    "RunClaim",
    "WsiInstance",
    "WsiLevel",
    "WsiSeries",
    "announce_batch",
    "check_pipeline_inputs",
    "check_wsi_series",
    "claim_batch_run",
    "find_ready_batches",
    "gateway_names_hidden",
    "ingest_batch",
    "pending_batches",
    "quarantine",
    "read_accepted",
    "read_wsi_instance",
    "sniff_format",
    "write_reason",
]

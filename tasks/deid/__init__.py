"""De-identification: the engine (pure functions from input bytes to de-identified bytes) and the stage.

DICOM headers follow DICOM PS3.15 Annex E (Table E.1-1) with the project's options, pseudonyms are
keyed HMACs, burned-in text is blanked or the file refused, slides lose label/macro images and
vendor metadata, and the PHI scanner checks every output against the identifiers of its input.
"""

from tasks.deid.dicom import DicomDeidResult, collect_dicom_identifiers, deidentify_dicom
from tasks.deid.leakcheck import input_identifiers, scan_outputs
from tasks.deid.phiscan import PhiHit, collect_identifiers, scan_for_phi, scan_slide_file
from tasks.deid.profile import (
    DeidOption,
    DeidPolicy,
    PrivateTag,
    Region,
    ScrubRule,
    load_policy,
    policy_for,
    policy_from_mapping,
)
from tasks.deid.pseudonyms import date_shift_days, pseudonymize_patient_id, pseudonymize_uid
from tasks.deid.quarantine_queue import (
    RELEASE_RULES,
    HeldItem,
    QuarantineQueue,
    held_summary,
    reason_counts,
)
from tasks.deid.slide import SlideDeidResult, deidentify_slide
from tasks.deid.stage import DeidStageResult, deidentify_batch, deidentify_folder
from tasks.deid.suspects import PHI_SUSPECT, flagged_values

__all__ = [
    "PHI_SUSPECT",
    "RELEASE_RULES",
    "DeidOption",
    "DeidPolicy",
    "DeidStageResult",
    "DicomDeidResult",
    "HeldItem",
    "PhiHit",
    "PrivateTag",
    "QuarantineQueue",
    "Region",
    "ScrubRule",
    "SlideDeidResult",
    "collect_dicom_identifiers",
    "collect_identifiers",
    "date_shift_days",
    "deidentify_batch",
    "deidentify_dicom",
    "deidentify_folder",
    "deidentify_slide",
    "flagged_values",
    "held_summary",
    "input_identifiers",
    "load_policy",
    "policy_for",
    "policy_from_mapping",
    "pseudonymize_patient_id",
    "pseudonymize_uid",
    "reason_counts",
    "scan_for_phi",
    "scan_outputs",
    "scan_slide_file",
]

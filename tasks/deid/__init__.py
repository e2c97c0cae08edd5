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
from tasks.deid.slide import SlideDeidResult, deidentify_slide
from tasks.deid.stage import DeidStageResult, deidentify_batch, deidentify_folder

__all__ = [
    "DeidOption",
    "DeidPolicy",
    "DeidStageResult",
    "DicomDeidResult",
    "PhiHit",
    "PrivateTag",
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
    "input_identifiers",
    "load_policy",
    "policy_for",
    "policy_from_mapping",
    "pseudonymize_patient_id",
    "pseudonymize_uid",
    "scan_for_phi",
    "scan_outputs",
    "scan_slide_file",
]

"""DICOM stays DICOM: no de-identified output carries a dciodvfy error its input did not have.

dciodvfy (Debian's dicom3tools, installed by ``.ci/system-packages``) checks each file against
its IOD. Every file pydicom ships and reads is de-identified under the default options and under
the bare Basic Profile (with a region rule for every image, so burned-in modalities are accepted
and their pixels rewritten); each file mira refuses is listed below with the reason it must give.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mira.errors import DeidentificationError, InvalidInput
from tasks.deid import DeidPolicy, Region, ScrubRule, deidentify_dicom

KEY = b"0123456789abcdef0123456789abcdef"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
EVERY_IMAGE_RULE = (ScrubRule("*", (Region(0.0, 0.0, 0.1, 1.0),)),)
POLICIES = {
    "default": dataclasses.replace(DeidPolicy.default(), scrub_rules=EVERY_IMAGE_RULE),
    "basic": dataclasses.replace(DeidPolicy(options=frozenset()), scrub_rules=EVERY_IMAGE_RULE),
}
NOT_DICOM = "not a DICOM file"
NOT_COMPOSITE = "not a composite DICOM instance"
DICOMDIR = "a DICOMDIR is not an image instance"
# Files mira refuses (quarantined with this reason), so there is no output to check.
REFUSED = {
    "JPEG-lossy.dcm": "cannot decode pixel data",  # no installed decoder; its pixels need scrubbing
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode pixel data",
    "JPEGLSNearLossless_08.dcm": NOT_COMPOSITE,
    "JPEGLSNearLossless_16.dcm": NOT_COMPOSITE,
    "MR_truncated.dcm": "truncated file",
    "README.txt": NOT_DICOM,
    "SC_rgb_jls_lossy_line.dcm": NOT_COMPOSITE,
    "SC_rgb_jls_lossy_sample.dcm": NOT_COMPOSITE,
    "UN_sequence.dcm": NOT_COMPOSITE,
    "crayons.icc": NOT_DICOM,
    "dicomdirtests/DICOMDIR": DICOMDIR,
    "dicomdirtests/DICOMDIR-bigEnd": DICOMDIR,
    "dicomdirtests/DICOMDIR-empty.dcm": DICOMDIR,
    "dicomdirtests/DICOMDIR-implicit": DICOMDIR,
    "dicomdirtests/DICOMDIR-nooffset": DICOMDIR,
    "dicomdirtests/DICOMDIR-nopatient": DICOMDIR,
    "dicomdirtests/DICOMDIR-reordered": DICOMDIR,
    "dicomdirtests/README.txt": NOT_DICOM,
    "dicomdirtests/TINY_ALPHA/DICOMDIR": DICOMDIR,
    "dicomdirtests/TINY_ALPHA/README": NOT_DICOM,
    "empty_charset_LEI.dcm": NOT_COMPOSITE,
    "meta_missing_tsyntax.dcm": NOT_COMPOSITE,
    "nested_priv_SQ.dcm": NOT_COMPOSITE,
    "no_meta.dcm": NOT_DICOM,
    "no_meta_group_length.dcm": NOT_COMPOSITE,
    "priv_SQ.dcm": NOT_COMPOSITE,
    "rtplan.dump": NOT_DICOM,
    "rtstruct.dump": NOT_DICOM,
    "test1.json": NOT_DICOM,
    "test_PN.json": NOT_DICOM,
    "zipMR.gz": NOT_DICOM,
}
# De-identification replaces every instance UID by its pseudonym, and dciodvfy quotes UIDs in
# some messages ("StudyInstanceUID has same value as FrameOfReferenceUID <uid>", "Referenced SOP
# Instance is not listed ... ReferencedSOPInstanceUID <uid>"): the same defect with a new UID is
# not a new error. A UID is a dotted number, or any number right after "UID " (reportsi.dcm
# references instance "0", whose pseudonym is a valid UID).
_UID = re.compile(r"\b\d+(?:\.\d+)+\b|(?<=UID )\d[\d.]*")


def read_forced(path: Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True)
        except Exception:
            return None


def readable_files() -> list[str]:
    """Every bundled file pydicom reads as a dataset with at least one element (as in
    test_deid_dicom): nothing left out but what pydicom cannot read at all."""
    found = []
    for path in sorted(TEST_FILES.rglob("*")):
        dataset = read_forced(path) if path.is_file() else None
        if dataset is not None and len(dataset):
            found.append(str(path.relative_to(TEST_FILES)))
    return found


CORPUS = readable_files()


def dciodvfy_errors(data: bytes) -> frozenset[str]:
    """The Error lines dciodvfy reports for a file, with UIDs normalised (see ``_UID``)."""
    executable = shutil.which("dciodvfy")
    assert executable, "dciodvfy is missing: install Debian's dicom3tools (.ci/system-packages)"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file.dcm"
        path.write_bytes(data)
        run = subprocess.run([executable, str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return frozenset(_UID.sub("<uid>", line) for line in lines if line.startswith("Error"))


@functools.cache
def input_errors(name: str) -> frozenset[str]:
    """The input's errors. dciodvfy cannot read a deflated file ("Dicom dataset read failed",
    nothing else checked), so the baseline of one is the same dataset inflated by pydicom."""
    data = (TEST_FILES / name).read_bytes()
    dataset = read_forced(TEST_FILES / name)
    meta = getattr(dataset, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    if dataset is not None and meta is not None and deflated:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        inflated = io.BytesIO()
        dataset.save_as(inflated, enforce_file_format=True)
        data = inflated.getvalue()
    return dciodvfy_errors(data)


def test_dciodvfy_is_installed_and_reports_errors() -> None:
    assert shutil.which("dciodvfy"), "install Debian's dicom3tools (.ci/system-packages)"
    broken = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del broken.Rows
    buffer = io.BytesIO()
    broken.save_as(buffer)
    assert any("Rows" in line for line in dciodvfy_errors(buffer.getvalue()))


def test_every_refused_file_is_in_the_corpus() -> None:
    assert REFUSED.keys() <= set(CORPUS)
    assert len(CORPUS) - len(REFUSED) > 50


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@pytest.mark.parametrize("name", CORPUS)
def test_output_has_no_dciodvfy_error_its_input_lacks(name: str, policy_name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    if name in REFUSED:
        with pytest.raises((InvalidInput, DeidentificationError), match=REFUSED[name]):
            deidentify_dicom(data, KEY, POLICIES[policy_name])
        return
    output = deidentify_dicom(data, KEY, POLICIES[policy_name]).data
    assert dciodvfy_errors(output) - input_errors(name) == frozenset()

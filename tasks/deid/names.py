"""Names from the gateway side as identifiers: the folders and file name of an upload, and the
batch name.

Uploaders name folders after patients (``SMITH_MARIA/20230612_MR/IM0004.dcm``), so every path
component is searched in the file's outputs, except components that cannot identify anyone and
would otherwise block a batch for ever:

- structural names: the DICOM media folder ``DICOM`` and file ``DICOMDIR`` (PS3.10), and the
  words of the research keys the stage writes (``dicom/<patient>/.../<instance>.dcm``,
  ``slides/<slide>.tiff``), which every output key holds;
- values of the file's own coded attributes: a component equal (case-insensitively) to a Code
  String value that the de-identified output keeps (Body Part Examined ``CHEST``, Modality
  ``MR``, Laterality...). Such a value is a term of a controlled vocabulary that the output
  publishes anyway; a name hidden in a coded attribute is still found through the file's own
  identifiers (its Patient's Name), not through its folder.

Counter-shaped media names (``PA000000``, ``IM0004``) stay searched: they never occur in an
output, and a code of letters and digits may be an MRN.

The batch name goes into the research store (catalog part names and rows, quality paths, Data
Docs, snapshot names and manifests), so a batch whose name holds an identifier read from its own
files (names, IDs, dates, slide metadata; not their folder names, which are too often ordinary
words) is refused before anything is published (see :func:`batch_name_hits`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

import pydicom
from pydicom.dataset import Dataset

from tasks import layout
from tasks.deid.identifiers import IdentifierMatcher
from tasks.deid.phiscan import PhiHit, identifier_digest

STRUCTURAL_NAMES = frozenset(
    name.casefold()
    for name in ("DICOM", "DICOMDIR", layout.DICOM, layout.SLIDES, "dcm", layout.SLIDE_SUFFIX[1:])
)
_LETTERS_DIGITS = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def path_identifiers(path: str, coded_values: Iterable[str] = ()) -> set[str]:
    """The folder and file names of ``path`` (and the file's stem) that count as identifiers;
    ``coded_values`` are the Code String values of the file's de-identified output."""
    pure = PurePosixPath(path)
    exempt = STRUCTURAL_NAMES | {value.casefold() for value in coded_values}
    return {name for name in (*pure.parts, pure.stem) if name.casefold() not in exempt}


def coded_values(data: bytes | Dataset | None) -> set[str]:
    """Every Code String value of a DICOM file (its bytes, or the file already read), at every
    nesting level (file meta excluded)."""
    if isinstance(data, Dataset):
        return _dataset_codes(data)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data or b""), stop_before_pixels=True, force=True)
    except Exception:  # an unreadable output exempts nothing
        return set()
    return _dataset_codes(dataset)


def _dataset_codes(dataset: Dataset) -> set[str]:
    found: set[str] = set()
    for element in dataset.iterall():
        if element.VR != "CS" or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        found |= {str(value).strip() for value in values if str(value).strip()}
    return found


def batch_name_hits(batch: str, identifiers: Iterable[str]) -> list[PhiHit]:
    """The identifiers of a batch's file found in the batch's name, whole words or split where
    letters meet digits (``MRN3779036`` holds the PatientID ``3779036``)."""
    matcher = IdentifierMatcher(identifiers)
    if not batch or not matcher:
        return []
    texts = {batch, _LETTERS_DIGITS.sub(" ", batch)}
    tokens = {token.casefold() for text in texts for _, token in matcher.find(text)}
    return [PhiHit("batch name", "name", identifier_digest(token)) for token in sorted(tokens)]

"""Values the leak scan does not count as identifiers: text mira writes itself and terms of
standard coded vocabularies.

A patient named ``PATIENT^NUMBER001``, ``TEST^PATIENT`` or ``ORIGINAL^PRIMARY`` shares words with
such values (the code meaning "Retain Patient Characteristics Option" that mira records, Image
Type ``ORIGINAL\\PRIMARY\\AXIAL``); counting them would withhold every file of that patient
while nothing of the patient is in them. What is exempt, and nothing else:

- the De-identification Method (0012,0063) of the top-level dataset in the form mira writes,
  and whole values equal to mira's dummy text;
- the Code Meaning of a code mira records (DCM 1131xx), or of any code whose scheme is a
  standard one (DCM, SCT, LN...) and whose value and meaning are those the standard gives
  (pydicom's concept dictionary; a changed meaning is free text and is scanned);
- Code String (CS) values of public attributes whose every value is a term (letters, spaces and
  underscores, no digit: Image Type, Frame Type, Body Part Examined...).

Free text (descriptions, comments, names, IDs) is scanned for every token as before.
"""

from __future__ import annotations

import functools
import re

from pydicom.dataset import Dataset

from tasks.deid.profile import BASIC_PROFILE_CODE, CLEAN_PIXEL_DATA_CODE, OPTION_CODES
from tasks.deid.walker import DUMMY_TEXT

DEIDENTIFICATION_METHOD = 0x00120063
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODE_MEANING = 0x00080104
_MIRA_METHOD = re.compile(r"mira PS3\.15 E\.1-1 profile .* v\S*")
_MIRA_CODES = {
    ("DCM", value): meaning
    for value, meaning in (BASIC_PROFILE_CODE, CLEAN_PIXEL_DATA_CODE, *OPTION_CODES.values())
}
_TERM = re.compile(r"[A-Za-z_ ]+")


def is_exempt(dataset: Dataset, tag: int, vr: str, text: str, top_level: bool) -> bool:
    """Whether an element's value (``text``, multi-values joined by backslash) is mira's own
    text or a standard coded term, which the leak scan does not count."""
    value = text.strip("\x00 ")
    if value == DUMMY_TEXT:
        return True
    if tag == DEIDENTIFICATION_METHOD:
        return top_level and _MIRA_METHOD.fullmatch(value) is not None
    if tag == CODE_MEANING:
        return _is_standard_meaning(dataset, value)
    if vr == "CS" and (tag >> 16) % 2 == 0:
        terms = [term.strip() for term in value.split("\\")]
        return all(_TERM.fullmatch(term) for term in terms if term)
    return False


def _is_standard_meaning(item: Dataset, meaning: str) -> bool:
    scheme = _text(item, CODING_SCHEME_DESIGNATOR)
    standard = _MIRA_CODES.get((scheme, _text(item, CODE_VALUE)))
    if standard is None:
        standard = standard_meanings().get((scheme, _text(item, CODE_VALUE)))
    return standard is not None and standard.casefold() == meaning.casefold()


def _text(item: Dataset, tag: int) -> str:
    try:
        element = item.get(tag)
    except Exception:  # an undecodable value names no standard code
        return ""
    return "" if element is None or element.value is None else str(element.value).strip("\x00 ")


@functools.cache
def standard_meanings() -> dict[tuple[str, str], str]:
    """(scheme, code value) -> code meaning of every concept pydicom ships (DICOM PS3.16: DCM,
    SCT, LN, UCUM...). Imported on the first Code Meaning that holds a token (about a second)."""
    from pydicom.sr._concepts_dict import concepts

    schemes: dict[str, dict[str, dict[str, tuple[str, list[int]]]]] = concepts  # type: ignore[assignment]
    return {
        (scheme, value): entry[0]
        for scheme, by_keyword in schemes.items()
        for by_value in by_keyword.values()
        for value, entry in by_value.items()
    }

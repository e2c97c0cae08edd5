"""The dummy item that replaces the items of a sequence whose Table E.1-1 action is D.

PS3.15 D means "a non-zero length dummy value consistent with the VR"; for a sequence that is one
item holding the attributes its IOD requires, each with a dummy value (or empty where the
attribute is type 2). No value is taken from the original items except a Graphic Layer name,
which must match a layer the presentation state still defines (Graphic Layer Sequence is kept).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian

DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATETIME = "19000101000000"
DUMMY_CODING_SCHEME = "99MIRA"
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def dummy_code_item() -> Dataset:
    """A Code Sequence Macro item of mira's private coding scheme meaning "anonymized"."""
    item = Dataset()
    item.CodeValue = DUMMY_TEXT
    item.CodingSchemeDesignator = DUMMY_CODING_SCHEME
    item.CodeMeaning = DUMMY_TEXT
    return item


def _flow_identifier(_: Sequence[Dataset]) -> Dataset:
    item = Dataset()
    item.FlowIdentifier = bytes(16)
    item.FlowTransferSyntaxUID = ExplicitVRLittleEndian
    item.FlowRTPSamplingRate = 0
    return item


def _graphic_annotation(original: Sequence[Dataset]) -> Dataset:
    """One invisible point on the first original item's layer (the layer must stay defined)."""
    layer = str(original[0].get("GraphicLayer", "")) if original else ""
    point = Dataset()
    point.GraphicAnnotationUnits = "PIXEL"
    point.GraphicDimensions = 2
    point.NumberOfGraphicPoints = 1
    point.GraphicData = [0.0, 0.0]
    point.GraphicType = "POINT"
    item = Dataset()
    item.GraphicLayer = layer if _CODE_STRING.fullmatch(layer) else DUMMY_TEXT
    item.GraphicObjectSequence = [point]
    return item


def _code(_: Sequence[Dataset]) -> Dataset:
    return dummy_code_item()


def _person_identification(_: Sequence[Dataset]) -> Dataset:
    """Person Identification Macro: a code and an institution name (one of name/code)."""
    item = Dataset()
    item.PersonIdentificationCodeSequence = [dummy_code_item()]
    item.InstitutionName = DUMMY_TEXT
    return item


def _verifying_observer(_: Sequence[Dataset]) -> Dataset:
    item = Dataset()
    item.VerifyingObserverName = DUMMY_TEXT
    item.VerifyingObserverIdentificationCodeSequence = []
    item.VerifyingOrganization = DUMMY_TEXT
    item.VerificationDateTime = DUMMY_DATETIME
    return item


def _content_item(_: Sequence[Dataset]) -> Dataset:
    """A TEXT content item (Content Sequence is D when Clean Structured Content is off)."""
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [dummy_code_item()]
    item.TextValue = DUMMY_TEXT
    return item


DUMMY_ITEMS: dict[int, Callable[[Sequence[Dataset]], Dataset]] = {
    0x00340001: _flow_identifier,  # Flow Identifier Sequence
    0x00700001: _graphic_annotation,  # Graphic Annotation Sequence
    0x00401101: _code,  # Person Identification Code Sequence
    0x00080082: _code,  # Institution Code Sequence
    0x00081072: _person_identification,  # Operator Identification Sequence
    0x0040A073: _verifying_observer,  # Verifying Observer Sequence
    0x0040A730: _content_item,  # Content Sequence
}


def dummy_item(tag: BaseTag | int, original: Sequence[Dataset]) -> Dataset | None:
    """The dummy item for a D-coded sequence, or None for a sequence mira has no dummy for
    (the test of the table makes sure every D-coded sequence of Table E.1-1 has one)."""
    build = DUMMY_ITEMS.get(int(tag))
    return build(original) if build is not None else None

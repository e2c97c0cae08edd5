"""The project's encoding of PS3.15 Table E.1-1 and the per-project profile file."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_keyword, dictionary_VR
from pydicom.datadict import tag_for_keyword as keyword_tag
from pydicom.dataset import Dataset

from mira.errors import ConfigError
from tasks.deid import DeidOption, DeidPolicy, PrivateTag, deidentify_dicom, load_policy
from tasks.deid.actions import Action, compile_profile, load_profile_table
from tasks.deid.build_profile_table import TABLE_FILE, build_table
from tasks.deid.dummy_items import DUMMY_ITEMS

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE_TABLE = REFERENCE / "ps3.15-table-E.1-1-2024b.json"
KEY = b"0123456789abcdef0123456789abcdef"


@pytest.mark.skipif(not REFERENCE_TABLE.exists(), reason="../shared/reference is absent")
def test_project_table_matches_the_reference_edition() -> None:
    shipped = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    assert shipped == build_table(REFERENCE_TABLE, "2024b")
    assert len(shipped["rows"]) == len(json.loads(REFERENCE_TABLE.read_text(encoding="utf-8")))


def test_every_single_tag_row_resolves_under_every_option_set() -> None:
    table = load_profile_table()
    assert len(table.rows) == 621
    policies = [
        DeidPolicy.default(),
        DeidPolicy(options=frozenset()),
        DeidPolicy(
            options=frozenset(set(DeidOption) - {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES})
        ),
    ]
    for policy in policies:
        rules = compile_profile(policy).rules
        for row in table.single_tag_rows():
            assert int(row.tag, 16) in rules or row.tag.startswith("0002"), row


def rule(keyword_tag: int, policy: DeidPolicy | None = None) -> Action:
    return compile_profile(policy or DeidPolicy.default()).rules[keyword_tag].action


def test_combined_codes_take_the_least_destructive_valid_action() -> None:
    assert rule(0x00080080) is Action.DUMMY  # Institution Name X/Z/D
    assert rule(0x00081070) is Action.DUMMY  # Operators' Name X/Z/D
    assert rule(0x300E0008) is Action.EMPTY  # Reviewer Name X/Z
    assert rule(0x00081140) is Action.WALK_ITEMS  # Referenced Image Sequence X/Z/U*
    assert rule(0x00081110) is Action.WALK_ITEMS  # Referenced Study Sequence X/Z
    assert (
        rule(0x00080082, DeidPolicy(options=frozenset())) is Action.DUMMY
    )  # Institution Code Sequence X/Z/D
    assert rule(0x00081072) is Action.DUMMY  # Operator Identification Sequence X/D
    assert rule(0x0040A088) is Action.EMPTY  # Verifying Observer Identification Code Sequence Z
    assert rule(0x00081120) is Action.REMOVE  # Referenced Patient Sequence X


def test_default_options_shift_dates_keep_characteristics_and_clean_descriptors() -> None:
    assert rule(0x00080020) is Action.SHIFT_DATE  # Study Date
    assert rule(0x00080030) is Action.KEEP  # Study Time: whole-day shifts keep it
    assert rule(0x00100040) is Action.KEEP  # Patient's Sex
    assert rule(0x00101010) is Action.KEEP  # Patient's Age
    assert rule(0x00081030) is Action.CLEAN_TEXT  # Study Description
    assert rule(0x0040A730) is Action.CLEAN_ITEMS  # Content Sequence
    assert rule(0x00100030) is Action.EMPTY  # Patient's Birth Date: Z under every option
    assert rule(0x0020000D) is Action.UID
    assert rule(0x00100020) is Action.PATIENT_ID


def test_options_switch_actions() -> None:
    basic = DeidPolicy(options=frozenset())
    assert rule(0x00080020, basic) is Action.EMPTY
    assert rule(0x00081030, basic) is Action.REMOVE
    assert rule(0x00100040, basic) is Action.EMPTY
    full = DeidPolicy(options=frozenset({DeidOption.RETAIN_LONGITUDINAL_FULL_DATES}))
    assert rule(0x00080020, full) is Action.KEEP
    uids = DeidPolicy(options=frozenset({DeidOption.RETAIN_UIDS}))
    assert rule(0x0020000D, uids) is Action.KEEP
    device = DeidPolicy(options=frozenset({DeidOption.RETAIN_DEVICE_IDENTITY}))
    assert rule(0x00181000, device) is Action.KEEP


def test_profile_file_sets_options_rules_and_safe_private(tmp_path: Path) -> None:
    document = {
        "name": "trial-7",
        "version": "2",
        "options": {"retain_device_identity": True, "clean_descriptors": False},
        "safe_private": ["0019,GEMS_ACQU_01,0C"],
        "uid_root": "1.2.826.0.1.3680043.10.999",
        "date_shift_max_days": 30,
        "scrub_rules": [
            {
                "modality": "US",
                "manufacturer": "ACME",
                "regions": [{"top": 0, "left": 0, "height": 0.2, "width": 1}],
            }
        ],
    }
    path = tmp_path / "deid-profile.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    policy = load_policy(path)
    assert policy.name == "trial-7"
    assert DeidOption.RETAIN_DEVICE_IDENTITY in policy.options
    assert DeidOption.CLEAN_DESCRIPTORS not in policy.options
    assert DeidOption.RETAIN_PATIENT_CHARACTERISTICS in policy.options
    assert policy.safe_private[0].creator == "GEMS_ACQU_01"
    assert policy.has(DeidOption.RETAIN_SAFE_PRIVATE)
    assert ("113111", "Retain Safe Private Option") in policy.method_codes()
    assert policy.scrub_rule_for("US", "ACME Corp", "X1") is policy.scrub_rules[0]
    assert policy.scrub_rule_for("US", "Other", "X1") is None
    assert policy.scrub_rules[0].regions[0].bounds(100, 50) == (0, 20, 0, 50)


def test_yaml_profiles_are_read(tmp_path: Path) -> None:
    path = tmp_path / "deid-profile.yaml"
    path.write_text("name: y\noptions:\n  clean_graphics: true\n", encoding="utf-8")
    assert DeidOption.CLEAN_GRAPHICS in load_policy(path).options


@pytest.mark.parametrize(
    "document",
    [
        {"unknown": 1},
        {"options": {"retain_everything": True}},
        {"options": {"retain_longitudinal_full_dates": True}},
        {"safe_private": ["0010,X,10"]},
        {"uid_root": "1.02"},
        {
            "scrub_rules": [
                {"modality": "US", "regions": [{"top": 0.5, "left": 0, "height": 0.6, "width": 1}]}
            ]
        },
    ],
)
def test_invalid_profiles_are_refused(tmp_path: Path, document: dict[str, object]) -> None:
    path = tmp_path / "deid-profile.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError):
        load_policy(path)


REFERENCE_OPTIONS = {
    "rtnSafePrivOpt": DeidOption.RETAIN_SAFE_PRIVATE,
    "rtnUIDsOpt": DeidOption.RETAIN_UIDS,
    "rtnDevIdOpt": DeidOption.RETAIN_DEVICE_IDENTITY,
    "rtnInstIdOpt": DeidOption.RETAIN_INSTITUTION_IDENTITY,
    "rtnPatCharsOpt": DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
    "rtnLongFullDatesOpt": DeidOption.RETAIN_LONGITUDINAL_FULL_DATES,
    "rtnLongModifDatesOpt": DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    "cleanDescOpt": DeidOption.CLEAN_DESCRIPTORS,
    "cleanStructContOpt": DeidOption.CLEAN_STRUCTURED_CONTENT,
    "cleanGraphOpt": DeidOption.CLEAN_GRAPHICS,
}
EVERY_OPTION_SET = [
    DeidPolicy.default(),
    DeidPolicy(options=frozenset()),
    DeidPolicy(options=frozenset(set(DeidOption) - {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES})),
    DeidPolicy(
        options=frozenset(set(DeidOption) - {DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES})
    ),
    *(DeidPolicy(options=frozenset({option})) for option in DeidOption),
]
NON_SINGLE_TAG_ROWS = {"50xxxxxx", "60xx3000", "60xx4000", "ggggeeee-where-gggg-is-odd", "00020003"}


def expected_basic(code: str, vr: str, row: dict[str, str]) -> Action:
    """What the reference's basic-profile code means for mira (README, Decisions): combined codes
    take the least destructive code valid for every IOD type; D on a sequence is one dummy item."""
    parts = set(code.split("/"))
    if vr == "SQ":
        if "U*" in parts or (parts != {"X"} and "rtnUIDsOpt" in row):
            return Action.WALK_ITEMS  # a reference sequence: items kept, profile applied inside
        if parts == {"X"}:
            return Action.REMOVE
        return Action.DUMMY if "D" in parts else Action.EMPTY
    if vr == "UI" and parts & {"U", "D"}:
        return Action.UID
    if "D" in parts:
        return Action.DUMMY
    return Action.EMPTY if "Z" in parts else Action.REMOVE


def expected_action(row: dict[str, str], vr: str, keyword: str, policy: DeidPolicy) -> Action:
    """The action PS3.15 names for a reference row under a policy's options."""
    if keyword in {"PatientID", "PatientName"}:
        # Name Z, ID Z/D: both allow "a non-zero length value that may be a dummy value
        # consistent with the VR" (PS3.15 E.1.1): mira's dummy is the keyed patient pseudonym.
        assert row["basicProfile"] in {"Z", "Z/D"}
        return Action.PATIENT_ID if keyword == "PatientID" else Action.PATIENT_NAME
    codes = {
        row[key]
        for key, option in REFERENCE_OPTIONS.items()
        if key in row and option in policy.options
    }
    basic = expected_basic(row["basicProfile"], vr, row)
    if "C" in codes:
        if vr in {"DA", "DT"}:
            return Action.SHIFT_DATE
        if vr == "TM":
            return Action.KEEP  # a whole-day shift leaves the time of day as it was
        if vr == "SQ":
            return Action.CLEAN_ITEMS
        return (
            Action.CLEAN_TEXT
            if vr in {"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "PN"}
            else basic
        )
    if "K" in codes:
        return Action.WALK_ITEMS if vr == "SQ" else Action.KEEP
    return basic


@pytest.mark.skipif(not REFERENCE_TABLE.exists(), reason="../shared/reference is absent")
@pytest.mark.parametrize(
    "policy",
    EVERY_OPTION_SET,
    ids=lambda p: "+".join(sorted(o.value for o in p.options)) or "basic",
)
def test_every_reference_row_compiles_to_the_action_ps315_names(policy: DeidPolicy) -> None:
    reference = json.loads(REFERENCE_TABLE.read_text(encoding="utf-8"))
    rules = compile_profile(policy).rules
    checked, wrong = 0, []
    for row in reference:
        row_id = row["id"].lower()
        if row_id in NON_SINGLE_TAG_ROWS:
            continue  # checked on real output by the test below
        tag = int(row_id, 16)
        vr = dictionary_VR(tag).split(" ")[0]
        expected = expected_action(row, vr, dictionary_keyword(tag), policy)
        if rules[tag].action is not expected:
            wrong.append(
                f"{row['tag']} {row['name']} {row['basicProfile']}: {rules[tag].action} != {expected}"
            )
        checked += 1
    assert wrong == []
    assert checked + len(NON_SINGLE_TAG_ROWS) == len(reference) == 621


def test_rows_outside_the_tag_lookup_are_applied_to_real_output() -> None:
    """Curves (50xx), overlay data and comments (60xx), private attributes (X; kept only when
    the safe list names them) and Media Storage SOP Instance UID (U)."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    source.add_new(0x50000010, "US", 1)
    source.add_new(0x50003000, "OW", b"\x00\x01")
    source.add_new(0x60003000, "OW", b"\x00\x01")
    source.add_new(0x60004000, "LT", "overlay comment")
    buffer = io.BytesIO()
    source.save_as(buffer)
    policies = [
        DeidPolicy.default(),
        dataclasses.replace(
            DeidPolicy.default(), safe_private=(PrivateTag.parse("0043,GEMS_PARM_01,10"),)
        ),
    ]
    for policy in policies:
        output = pydicom.dcmread(io.BytesIO(deidentify_dicom(buffer.getvalue(), KEY, policy).data))
        assert not any(element.tag.group >> 8 in (0x50, 0x60) for element in output)
        private = sorted(int(e.tag) for e in output if e.tag.is_private)
        assert private == ([] if not policy.safe_private else [0x00430010, 0x00431010])
        assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
        assert output.SOPInstanceUID != source.SOPInstanceUID


def d_coded_sequences(policy: DeidPolicy) -> set[str]:
    """Keywords of the Table E.1-1 sequences whose compiled action under ``policy`` is D."""
    compiled = compile_profile(policy).rules
    table = load_profile_table()
    return {
        r.keyword
        for r in table.single_tag_rows()
        if r.vr == "SQ" and compiled[int(r.tag, 16)].action is Action.DUMMY
    }


def test_every_d_coded_sequence_has_a_dummy_item() -> None:
    assert d_coded_sequences(DeidPolicy(options=frozenset())) == {
        "FlowIdentifierSequence",
        "GraphicAnnotationSequence",
        "PersonIdentificationCodeSequence",
        "VerifyingObserverSequence",
        "OperatorIdentificationSequence",
        "InstitutionCodeSequence",
        "ContentSequence",
    }
    every = set().union(*(d_coded_sequences(p) for p in EVERY_OPTION_SET))
    assert {keyword_tag(k) for k in every} <= DUMMY_ITEMS.keys()


PHI = "SMITH^JOHN"


def phi_code_item() -> Dataset:
    item = Dataset()
    item.CodeValue = "MRN7734119"
    item.CodingSchemeDesignator = "HOSPITAL"
    item.CodeMeaning = PHI
    return item


def phi_items() -> dict[str, Dataset]:
    """One item per D-coded sequence, every value an identifier of someone."""
    flow = Dataset()
    flow.FlowIdentifier = b"JOHNSMITHCAMERA7"
    flow.FlowTransferSyntaxUID = "1.2.840.10008.1.2.1"
    flow.FlowRTPSamplingRate = 90000
    text = Dataset()
    text.UnformattedTextValue = PHI
    text.AnchorPoint = [1.0, 1.0]
    text.AnchorPointAnnotationUnits = "PIXEL"
    text.AnchorPointVisibility = "Y"
    graphic = Dataset()
    graphic.GraphicLayer = "LAYER1"
    graphic.TextObjectSequence = [text]
    observer = Dataset()
    observer.VerifyingObserverName = PHI
    observer.VerifyingObserverIdentificationCodeSequence = [phi_code_item()]
    observer.VerifyingOrganization = "St. Elsewhere Hospital"
    observer.VerificationDateTime = "20230612101500"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = [phi_code_item()]
    operator.InstitutionName = "St. Elsewhere Hospital"
    content = Dataset()
    content.RelationshipType = "CONTAINS"
    content.ValueType = "TEXT"
    content.ConceptNameCodeSequence = [phi_code_item()]
    content.TextValue = f"Seen by {PHI}, MRN7734119"
    return {
        "FlowIdentifierSequence": flow,
        "GraphicAnnotationSequence": graphic,
        "PersonIdentificationCodeSequence": phi_code_item(),
        "VerifyingObserverSequence": observer,
        "OperatorIdentificationSequence": operator,
        "InstitutionCodeSequence": phi_code_item(),
        "ContentSequence": content,
    }


@pytest.mark.parametrize("keyword", sorted(phi_items()))
def test_a_d_coded_sequence_becomes_one_dummy_item_in_valid_dicom(keyword: str) -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    setattr(source, keyword, [phi_items()[keyword], phi_items()[keyword]])
    buffer = io.BytesIO()
    source.save_as(buffer)
    policy = DeidPolicy(options=frozenset())
    data = deidentify_dicom(buffer.getvalue(), KEY, policy).data
    for secret in (
        b"SMITH",
        b"MRN7734119",
        b"Elsewhere",
        b"JOHNSMITHCAMERA7",
        b"20230612",
        b"HOSPITAL",
    ):
        assert secret not in data
    output = pydicom.dcmread(io.BytesIO(data))
    items = output[keyword].value
    assert len(items) == 1
    assert items[0] == DUMMY_ITEMS[keyword_tag(keyword)]([phi_items()[keyword]])
    assert all(
        element.value not in ("", None, []) or element.VR == "SQ" for element in items[0].iterall()
    )
    rewritten = io.BytesIO()
    output.save_as(rewritten, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(rewritten.getvalue()))[keyword].value == items
    if keyword == "GraphicAnnotationSequence":
        assert items[0].GraphicLayer == "LAYER1"  # still names a layer the state defines

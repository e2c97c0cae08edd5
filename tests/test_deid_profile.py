"""The project's encoding of PS3.15 Table E.1-1 and the per-project profile file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mira.errors import ConfigError
from tasks.deid import DeidOption, DeidPolicy, load_policy
from tasks.deid.actions import Action, compile_profile, load_profile_table
from tasks.deid.build_profile_table import TABLE_FILE, build_table

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE_TABLE = REFERENCE / "ps3.15-table-E.1-1-2024b.json"


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
    assert rule(0x00080082) is Action.EMPTY  # Institution Code Sequence X/Z/D
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

"""PS3.15 Table E.1-1 resolved into one action per tag for a policy, computed once per policy.

Decisions where the standard leaves a choice (documented in ``tasks/deid/README.md``):

- Combined codes name the action per IOD type (X for type 3, Z for type 2, D for type 1). Without
  IOD tables, mira takes the least destructive code that is valid for every type: any code with
  D -> D (dummy), X/Z -> Z (zero length). The result is always a valid file and never keeps data.
- ``U*`` (Referenced/Source Image Sequence) keeps the sequence and applies the profile to its
  items; so do the other reference sequences (rows with a Retain UIDs variant). Any other
  sequence whose code resolves to D gets one dummy item (``dummy_items.py``: the attributes its
  IOD requires, dummy or empty, nothing from the original); Z empties it.
- When several enabled options name an action, the more protective wins: C (clean) over K.
- C under the Modified Dates option shifts DA and DT by the per-patient number of days; TM is
  kept because a whole-day shift leaves the time of day unchanged.
- Attributes outside the table: PN is emptied, DA/DT follow the date option, UI is pseudonymised
  unless it names a class, syntax or coding scheme, every other text is kept but cleaned of the
  record's identifiers. Groups 50xx/60xx (curves, overlays) are removed whole.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.datadict import DicomDictionary

from mira.errors import ConfigError
from tasks.deid.profile import DeidOption, DeidPolicy

TABLE_FILE = Path(__file__).with_name("ps315_table_e11.json")

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
FREE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
COLLECT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "DA", "DT", "UI", "UR"})
DATE_VRS = frozenset({"DA", "DT"})
DESCRIPTOR_OPTIONS = frozenset({"clean_descriptors", "clean_structured_content"})
# UI attributes outside the table that name well-known things, never an instance.
_KEEP_UID_KEYWORD = re.compile(r"ClassUID|TransferSyntax|CodingScheme|ContextUID|MappingResource")


class Action(enum.Enum):
    """What happens to one attribute."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    UID = "U"
    SHIFT_DATE = "shift"
    CLEAN_TEXT = "clean"
    CLEAN_ITEMS = "clean-items"
    WALK_ITEMS = "walk-items"
    PATIENT_ID = "patient-id"
    PATIENT_NAME = "patient-name"


@dataclass(frozen=True, slots=True)
class TagRule:
    """The resolved action for one tag, with what to do when cleaning cannot be assured."""

    action: Action
    vr: str
    fallback: Action = Action.REMOVE
    collect: bool = False
    free_text: bool = False
    in_table: bool = True


@dataclass(frozen=True)
class TableRow:
    """One row of the project's encoding of Table E.1-1."""

    tag: str
    keyword: str
    vr: str
    basic: str
    options: Mapping[str, str]


@dataclass(frozen=True)
class ProfileTable:
    """The project's encoding of Table E.1-1 (see ``build_profile_table.py``)."""

    edition: str
    rows: tuple[TableRow, ...]

    def single_tag_rows(self) -> tuple[TableRow, ...]:
        """Rows naming one standard tag (not repeating groups, not the private-attribute row)."""
        return tuple(r for r in self.rows if re.fullmatch(r"[0-9a-f]{8}", r.tag))


@functools.cache
def load_profile_table(path: Path = TABLE_FILE) -> ProfileTable:
    """Read the project's table file (shipped with the package)."""
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the PS3.15 table {path}: {err}") from err
    rows = tuple(
        TableRow(r["tag"], r["keyword"], r["vr"], r["basic"], MappingProxyType(r["options"]))
        for r in document["rows"]
    )
    return ProfileTable(edition=document["edition"], rows=rows)


@dataclass(frozen=True)
class CompiledProfile:
    """Tag -> rule lookup for one policy: the table rows plus every dictionary tag outside it."""

    policy: DeidPolicy
    rules: Mapping[int, TagRule]
    table_edition: str

    def rule_for(self, tag: int, vr: str) -> TagRule:
        """The rule of a standard (even-group) tag; ``vr`` serves tags unknown to the dictionary."""
        rule = self.rules.get(tag)
        if rule is not None:
            return rule
        if tag & 0xFFFF == 0:
            return TagRule(Action.REMOVE, vr, in_table=False)
        return non_table_rule(tag, vr, "", self.policy)


def resolve_row(row: TableRow, policy: DeidPolicy) -> TagRule:
    """Resolve one table row under a policy's options into a :class:`TagRule`."""
    vr = row.vr
    if row.keyword == "PatientID":
        return TagRule(Action.PATIENT_ID, vr, collect=True)
    if row.keyword == "PatientName":
        return TagRule(Action.PATIENT_NAME, vr, collect=True)
    codes = {code for name, code in row.options.items() if policy.has(DeidOption(name))}
    basic = resolve_basic(row, policy)
    patient_characteristic = row.options.get(DeidOption.RETAIN_PATIENT_CHARACTERISTICS.value)
    descriptor = bool(DESCRIPTOR_OPTIONS & row.options.keys()) or patient_characteristic == "C"
    if "C" in codes:
        action = resolve_clean(vr, basic)
    elif "K" in codes:
        action = Action.WALK_ITEMS if vr == "SQ" else Action.KEEP
    else:
        action = basic
    collect = (
        action in {Action.REMOVE, Action.EMPTY, Action.DUMMY, Action.UID, Action.SHIFT_DATE}
        and vr in COLLECT_VRS
        and not descriptor
    )
    free_text = descriptor and vr in TEXT_VRS | {"CS", "AE"}
    return TagRule(action, vr, fallback=basic, collect=collect, free_text=free_text)


def resolve_basic(row: TableRow, policy: DeidPolicy) -> Action:
    """The Basic Profile action of a row, with combined codes resolved (see module docstring)."""
    parts = set(row.basic.split("/"))
    if row.vr == "SQ":
        if "U*" in parts:
            return Action.WALK_ITEMS
        if parts == {"X"}:
            return Action.REMOVE
        if DeidOption.RETAIN_UIDS.value in row.options:
            return Action.WALK_ITEMS
        return Action.DUMMY if "D" in parts else Action.EMPTY
    if row.vr == "UI" and parts & {"U", "D"}:
        return Action.UID
    if "D" in parts:
        return Action.DUMMY
    if "Z" in parts:
        return Action.EMPTY
    return Action.REMOVE


def resolve_clean(vr: str, basic: Action) -> Action:
    """What C (clean) means for a VR; binary values cannot be cleaned and fall back to basic."""
    if vr in DATE_VRS:
        return Action.SHIFT_DATE
    if vr == "TM":
        return Action.KEEP
    if vr == "SQ":
        return Action.CLEAN_ITEMS
    if vr in TEXT_VRS | {"CS", "AE", "PN"}:
        return Action.CLEAN_TEXT
    return basic


def non_table_rule(tag: int, vr: str, keyword: str, policy: DeidPolicy) -> TagRule:
    """The rule of a standard attribute that Table E.1-1 does not list."""
    if vr == "PN":
        return TagRule(Action.EMPTY, vr, collect=True, in_table=False)
    if vr == "SQ":
        return TagRule(Action.WALK_ITEMS, vr, in_table=False)
    if vr == "UI":
        keep = policy.has(DeidOption.RETAIN_UIDS) or bool(_KEEP_UID_KEYWORD.search(keyword))
        action = Action.KEEP if keep else Action.UID
        return TagRule(action, vr, collect=not keep, in_table=False)
    if vr in DATE_VRS:
        if policy.has(DeidOption.RETAIN_LONGITUDINAL_FULL_DATES):
            return TagRule(Action.KEEP, vr, in_table=False)
        if policy.has(DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES):
            return TagRule(Action.SHIFT_DATE, vr, collect=True, in_table=False)
        return TagRule(Action.EMPTY, vr, collect=True, in_table=False)
    return TagRule(Action.KEEP, vr, in_table=False, free_text=vr in FREE_TEXT_VRS)


@functools.lru_cache(maxsize=32)
def compile_profile(policy: DeidPolicy) -> CompiledProfile:
    """Build the tag -> rule lookup once per policy (cached: policies are immutable)."""
    table = load_profile_table()
    rules: dict[int, TagRule] = {}
    for tag, entry in DicomDictionary.items():
        if tag >> 16 not in {0x0002} and tag & 0xFFFF and entry[0] and not _repeating(tag):
            rules[tag] = non_table_rule(tag, entry[0].split(" ")[0], entry[4], policy)
    for row in table.single_tag_rows():
        rules[int(row.tag, 16)] = resolve_row(row, policy)
    return CompiledProfile(policy, MappingProxyType(rules), table.edition)


def _repeating(tag: int) -> bool:
    """Whether a tag lies in the curve (50xx) or overlay (60xx) repeating groups."""
    return (tag >> 24) in {0x50, 0x60}

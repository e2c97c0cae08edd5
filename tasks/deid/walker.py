"""The single pass over a dataset that applies a compiled profile and gathers identifiers.

Speed matters (thousands of files per batch), so the walk works on pydicom's element dict
directly: kept elements stay undecoded ``RawDataElement``s and are written back byte for byte;
replacements are built as raw ASCII elements in the dataset's own encoding, which pydicom writes
without re-encoding. Only sequences, collected identifiers and text to clean are decoded.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from mira.errors import DeidentificationError
from tasks.deid.actions import (
    COLLECT_VRS,
    FREE_TEXT_VRS,
    TEXT_VRS,
    Action,
    CompiledProfile,
    TagRule,
)
from tasks.deid.dummy_items import DUMMY_TEXT, dummy_item
from tasks.deid.identifiers import IdentifierMatcher, clean_text, value_tokens
from tasks.deid.pseudonyms import date_shift_days, pseudonymize_patient_id, pseudonymize_uid

_DUMMY_VALUES: dict[str, Any] = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "urn:mira:anonymized",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
}
_ASCII_VRS = frozenset({"UI", "DA", "DT", "TM", "AE", "CS", "AS", "DS", "IS"})
_STRING_VRS = _ASCII_VRS | TEXT_VRS | {"PN", "UC", "UR"}
_SINGLE_CODECS = frozenset({"iso8859", "latin_1", "utf_8", "iso_ir_100", "cp1252"})
_PRIVATE_COLLECT_VRS = frozenset({"PN", "DA", "DT", "UI"})
_DIGITS = re.compile(r"\d+")
_PATIENT_ACTIONS = frozenset({Action.PATIENT_ID, Action.PATIENT_NAME})


class SequenceRecord:
    """A sequence that was parsed to be walked, and whether anything inside it changed: an
    untouched one is put back as read, so pydicom writes its original bytes."""

    __slots__ = ("dataset", "dirty", "raw", "tag")

    def __init__(self, dataset: Dataset, tag: BaseTag, raw: Any) -> None:
        self.dataset = dataset
        self.tag = tag
        self.raw = raw if isinstance(raw, RawDataElement) else None
        self.dirty = False


Deferred = tuple[Dataset, BaseTag, TagRule, bool, tuple[SequenceRecord, ...]]


class DatasetWalker:
    """Applies a compiled profile to a dataset in place and gathers the record's identifiers."""

    def __init__(self, profile: CompiledProfile, key: bytes, patient: str) -> None:
        self.profile = profile
        self.rules = profile.rules
        self.key = key
        self.root = profile.policy.uid_root
        self.patient_id = pseudonymize_patient_id(patient, key)
        days = date_shift_days(patient, key, profile.policy.date_shift_max_days)
        self.shift = datetime.timedelta(days=days)
        self.identifiers: set[str] = set()
        self.deferred: list[Deferred] = []
        self.uids: dict[str, str] = {}
        self.open_sequences: list[SequenceRecord] = []
        self.sequences: list[SequenceRecord] = []
        self.safe_private = {(p.group, p.creator, p.offset) for p in profile.policy.safe_private}

    def walk(self, dataset: Dataset, cleaning: bool = False) -> None:
        """Apply the profile to every element of ``dataset`` and, recursively, of its items."""
        elements = dataset._dict  # the walk reads and replaces elements without decoding them
        rules = self.rules
        for tag, elem in list(elements.items()):
            group = tag >> 16
            if group & 1:
                self._private(dataset, tag, elem)
            elif group >> 8 in (0x50, 0x60):
                del elements[tag]
                self._touch()
            else:
                rule = rules.get(tag) or self.profile.rule_for(tag, _vr(elem))
                if rule.action is Action.KEEP:  # the common case, inlined for speed
                    if (elem.VR or rule.vr) in TEXT_VRS:
                        self.deferred.append(
                            (dataset, tag, rule, cleaning, (*self.open_sequences,))
                        )
                    continue
                self._apply(dataset, tag, elem, rule, cleaning)

    def _apply(self, ds: Dataset, tag: BaseTag, elem: Any, rule: TagRule, cleaning: bool) -> None:
        """Carry out one rule on one element."""
        action = rule.action
        vr = rule.vr if elem.VR in (None, "UN") else elem.VR
        if action is Action.WALK_ITEMS or action is Action.CLEAN_ITEMS:
            self._walk_sequence(ds, tag, elem, cleaning or action is Action.CLEAN_ITEMS)
            return
        if rule.collect or action in _PATIENT_ACTIONS:
            text = self._collect(ds, tag, elem, vr)
        elif action is Action.UID or action is Action.SHIFT_DATE:
            text = _text(ds, tag, elem, vr)
        if action is Action.UID:
            _put(ds, tag, "UI", self._map_uids(text), elem)
        elif action is Action.SHIFT_DATE:
            _put(ds, tag, vr, self._shift_dates(text, vr), elem)
        elif action is Action.CLEAN_TEXT:
            self.deferred.append((ds, tag, rule, cleaning, tuple(self.open_sequences)))
            return
        elif action in _PATIENT_ACTIONS:
            _put(ds, tag, vr, self._patient_pseudonym(action, text), elem)
        else:
            if vr == "SQ":
                self.collect_items(_items(ds, tag))
            _replace(ds, tag, vr, action, elem)
        self._touch()

    def _patient_pseudonym(self, action: Action, original: str) -> str:
        """The record's patient pseudonym at the top level; nested items (another patient's
        identification) get the pseudonym of their own ID and an empty name."""
        if not self.open_sequences:
            return self.patient_id
        if action is Action.PATIENT_ID and original:
            return pseudonymize_patient_id(original, self.key)
        return ""

    def _walk_sequence(self, ds: Dataset, tag: BaseTag, elem: Any, cleaning: bool) -> None:
        """Walk the items of a kept sequence, remembering it so it can be restored if untouched."""
        record = SequenceRecord(ds, tag, elem)
        self.sequences.append(record)
        self.open_sequences.append(record)
        try:
            for item in _items(ds, tag):
                self.walk(item, cleaning)
        finally:
            self.open_sequences.pop()

    def _touch(self) -> None:
        """Mark every sequence around the element being changed as changed."""
        for record in self.open_sequences:
            record.dirty = True

    def restore_untouched_sequences(self) -> None:
        """Put back, as read, every sequence in which nothing changed (faster to write)."""
        for record in self.sequences:
            if not record.dirty and record.raw is not None:
                record.dataset._dict[record.tag] = record.raw

    def _private(self, ds: Dataset, tag: BaseTag, elem: Any) -> None:
        """Remove a private element unless the policy's safe list names it."""
        if self.safe_private and self._is_safe_private(ds, tag):
            if elem.VR == "SQ":
                self._walk_sequence(ds, tag, elem, False)
            return
        self._collect_private(ds, tag, elem)
        del ds._dict[tag]
        self._touch()

    def _collect_private(self, ds: Dataset, tag: BaseTag, elem: Any) -> None:
        """Gather identifiers from a private element: names, dates and UIDs when its VR is
        known, and the items of private sequences (undefined-length UN is parsed as one)."""
        vr = elem.VR or "UN"
        if vr in _PRIVATE_COLLECT_VRS:
            self._collect(ds, tag, elem, vr)
        elif vr == "SQ" or getattr(elem, "is_undefined_length", False):
            with contextlib.suppress(DeidentificationError):
                self.collect_items(_items(ds, tag))

    def _is_safe_private(self, ds: Dataset, tag: BaseTag) -> bool:
        """Whether a private element (or the creator of a safe block) is on the safe list."""
        group, element = tag >> 16, tag & 0xFFFF
        if 0x10 <= element <= 0xFF:
            creator = _text(ds, tag, ds.get_item(tag), "LO")
            return any((group, creator) == (g, c) for g, c, _ in self.safe_private)
        if element < 0x1000:
            return False
        creator_tag = BaseTag((group << 16) | (element >> 8))
        creator_elem = ds.get_item(creator_tag)
        creator = _text(ds, creator_tag, creator_elem, "LO") if creator_elem is not None else ""
        return (group, creator, element & 0xFF) in self.safe_private

    def collect_items(self, items: Iterable[Dataset]) -> None:
        """Gather identifiers from items that are about to be removed, at every depth."""
        for item in items:
            for tag, elem in list(item._dict.items()):
                if tag >> 16 & 1 or (tag >> 24) in (0x50, 0x60):
                    self._collect_private(item, tag, elem)
                    continue
                rule = self.rules.get(tag) or self.profile.rule_for(tag, _vr(elem))
                vr = rule.vr if elem.VR in (None, "UN") else elem.VR
                if vr == "SQ":
                    self.collect_items(_items(item, tag))
                elif rule.collect or rule.action in _PATIENT_ACTIONS:
                    self._collect(item, tag, elem, vr)

    def collect_meta(self, meta: Dataset | None) -> None:
        """Gather the file meta's instance UID (the meta is rewritten, never copied)."""
        if meta is not None:
            self.identifiers.update(value_tokens("UI", peek_text(meta, 0x00020003)))

    def _collect(self, ds: Dataset, tag: BaseTag, elem: Any, vr: str) -> str:
        """Add the search tokens of one element's value to the record's identifiers; return
        the value as text."""
        text = _text(ds, tag, elem, vr)
        if vr in COLLECT_VRS and text and not (vr == "UI" and text in UID_dictionary):
            self.identifiers.update(value_tokens(vr, text))
        return text

    def _map_uids(self, text: str) -> str:
        """Pseudonymise each UID of a (multi-valued) UI value; well-known UIDs are kept."""
        out = []
        for uid in text.split("\\"):
            uid = uid.strip("\x00 ")
            if not uid or uid in UID_dictionary:
                out.append(uid)
                continue
            mapped = self.uids.get(uid)
            if mapped is None:
                mapped = self.uids[uid] = pseudonymize_uid(uid, self.key, self.root)
            out.append(mapped)
        return "\\".join(out)

    def _shift_dates(self, text: str, vr: str) -> str:
        """Move each DA/DT value by the patient's shift; unparseable values become empty."""
        return "\\".join(shift_date(v.strip("\x00 "), vr, self.shift) for v in text.split("\\"))

    def clean_deferred(self) -> None:
        """Clean descriptors and check kept text now that every identifier is known."""
        matcher = IdentifierMatcher(self.identifiers)
        checks = [d for d in self.deferred if d[2].action is Action.KEEP and not d[3]]
        cleans = [d for d in self.deferred if not (d[2].action is Action.KEEP and not d[3])]
        if matcher and _any_mention(checks, matcher):
            cleans += checks
        for ds, tag, rule, cleaning, enclosing in cleans:
            elem = ds._dict.get(tag)
            if elem is not None and self._clean(ds, tag, elem, rule, cleaning, matcher):
                for record in enclosing:
                    record.dirty = True

    def _clean(
        self,
        ds: Dataset,
        tag: BaseTag,
        elem: Any,
        rule: TagRule,
        cleaning: bool,
        matcher: IdentifierMatcher,
    ) -> bool:
        """Clean one text element; fall back to the basic action when safety is not assured.
        Return whether the element changed."""
        vr = rule.vr if elem.VR in (None, "UN") else elem.VR
        text = _text(ds, tag, elem, vr)
        free_text = rule.free_text or (cleaning and vr in FREE_TEXT_VRS)
        cleaned = clean_text(text, matcher, free_text)
        # A value cleaned down to nothing is no longer valid where the IOD requires one.
        if cleaned is None or (text.strip() and not cleaned.strip()):
            fallback = rule.fallback if rule.action is Action.CLEAN_TEXT else Action.DUMMY
            _replace(ds, tag, vr, fallback, elem)
            return True
        if cleaned != text:
            _put(ds, tag, vr, cleaned, elem)
            return True
        return False


def _any_mention(deferred: list[Deferred], matcher: IdentifierMatcher) -> bool:
    """Whether any kept text element may mention an identifier (one pass over all of them)."""
    ascii_tokens = all(token.isascii() for token in matcher.tokens)
    blob: list[bytes] = []
    for ds, tag, *_ in deferred:
        elem = ds._dict.get(tag)
        if not isinstance(elem, RawDataElement) or not ascii_tokens:
            return True
        blob.append(elem.value or b"")
    return matcher.might_mention_bytes(b"\x00".join(blob))


def _vr(elem: Any) -> str:
    """The VR of an element as read, or from the dictionary for implicit VR files."""
    if elem.VR not in (None, "UN"):
        return str(elem.VR)
    try:
        return str(dictionary_VR(elem.tag)).split(" ")[0]
    except KeyError:
        return "UN"


def _items(ds: Dataset, tag: BaseTag) -> Iterator[Dataset]:
    """The items of a sequence element (an element that is not a sequence yields nothing)."""
    try:
        value = ds[tag].value
    except Exception as err:
        raise DeidentificationError(f"cannot parse sequence {tag:08X}: {err}") from err
    if isinstance(value, Sequence):
        yield from value


def _text(ds: Dataset, tag: BaseTag, elem: Any, vr: str) -> str:
    """An element's value as one string (multi-values joined by backslash).

    Raw values are decoded directly when the character set is a single codec (the common
    case); ISO 2022 code extensions go through pydicom's decoder."""
    if isinstance(elem, RawDataElement) and vr in _STRING_VRS:
        raw = elem.value or b""
        if vr in _ASCII_VRS or raw.isascii():
            return raw.decode("ascii").strip("\x00 ")
        codecs: list[str] = list(getattr(ds, "_character_set", None) or [])
        if len(codecs) == 1 and codecs[0] in _SINGLE_CODECS:
            return raw.decode(codecs[0], "replace").strip("\x00 ")
    try:
        value = ds[tag].value
    except Exception as err:
        raise DeidentificationError(f"cannot decode element {tag:08X}: {err}") from err
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value)
    return str(value)


def raw_text_element(tag: int, vr: str, text: str, implicit: bool, little: bool) -> RawDataElement:
    """An ASCII string value encoded as a raw element (padded to even length as PS3.5 says)."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, little, True, False)


def peek_text(ds: Dataset, tag: int) -> str:
    """A string element's value without decoding it into the dataset ('' when absent)."""
    elem = ds._dict.get(BaseTag(tag))
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        return (elem.value or b"").decode("latin-1").strip("\x00 ")
    return "" if elem.value is None else str(elem.value).strip("\x00 ")


def _put(ds: Dataset, tag: BaseTag, vr: str, text: str, like: Any) -> None:
    """Store a string value; ASCII values become raw elements in the dataset's own encoding."""
    if isinstance(like, RawDataElement) and text.isascii():
        implicit, little = like.is_implicit_VR, like.is_little_endian
        ds._dict[tag] = raw_text_element(tag, vr, text, implicit, little)
    else:
        ds._dict[tag] = DataElement(tag, vr, text, validation_mode=config.IGNORE)


def _replace(ds: Dataset, tag: BaseTag, vr: str, action: Action, like: Any) -> None:
    """Remove, empty or dummy an element; a dummied sequence holds one dummy item."""
    if action is Action.REMOVE:
        del ds._dict[tag]
    elif vr == "SQ":
        item = dummy_item(tag, list(_items(ds, tag))) if action is Action.DUMMY else None
        ds[tag] = DataElement(tag, vr, Sequence([] if item is None else [item]))
    elif action is Action.DUMMY and vr in _STRING_VRS:
        _put(ds, tag, vr, str(_DUMMY_VALUES.get(vr, DUMMY_TEXT)), like)
    elif action is Action.DUMMY:
        value = _DUMMY_VALUES.get(vr, b"\x00\x00")
        ds._dict[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    elif vr in _STRING_VRS:
        _put(ds, tag, vr, "", like)
    else:
        ds._dict[tag] = DataElement(tag, vr, empty_value_for_VR(vr), validation_mode=config.IGNORE)


def shift_date(value: str, vr: str, shift: datetime.timedelta) -> str:
    """Shift one DA or DT value, keeping its precision and (for DT) its time and offset."""
    if not value:
        return ""
    digits = value.replace(".", "") if vr == "DA" else value
    match = _DIGITS.match(digits)
    head = match.group(0) if match else ""
    precision = min(len(head), 8)
    if precision not in (4, 6, 8) or (vr == "DA" and len(head) != 8):
        return ""
    try:
        day = datetime.date(
            int(head[:4]),
            int(head[4:6]) if precision >= 6 else 1,
            int(head[6:8]) if precision == 8 else 1,
        )
        shifted = day + shift
    except (ValueError, OverflowError):
        return ""
    rest = digits[precision:] if vr == "DT" else ""
    return shifted.strftime("%Y%m%d")[:precision] + rest

"""Keyed pseudonyms: stable across runs, distinct across inputs and keys, valid DICOM UIDs."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mira.errors import ConfigError
from tasks.deid import date_shift_days, pseudonymize_patient_id, pseudonymize_uid

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
UID_GRAMMAR = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
uids = st.from_regex(r"[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,8})){1,8}", fullmatch=True)


def assert_valid_uid(uid: str) -> None:
    assert len(uid) <= 64
    assert UID_GRAMMAR.fullmatch(uid), uid


@settings(max_examples=100, deadline=None)
@given(st.lists(uids, min_size=2, max_size=30, unique=True))
def test_uid_mapping_is_injective_and_stable(originals: list[str]) -> None:
    mapped = [pseudonymize_uid(uid, KEY) for uid in originals]
    assert len(set(mapped)) == len(originals)
    assert mapped == [pseudonymize_uid(uid, KEY) for uid in originals]
    for uid in mapped:
        assert_valid_uid(uid)
        assert uid.startswith("2.25.")


@settings(max_examples=100, deadline=None)
@given(uids)
def test_uid_mapping_depends_on_the_key_and_never_returns_the_input(uid: str) -> None:
    assert pseudonymize_uid(uid, KEY) != pseudonymize_uid(uid, OTHER_KEY)
    assert pseudonymize_uid(uid, KEY) != uid


@settings(max_examples=50, deadline=None)
@given(uids, st.sampled_from(["1.2.826.0.1.3680043.10.999", "1.2.3", "2.25"]))
def test_uids_under_a_configured_root_are_valid(uid: str, root: str) -> None:
    mapped = pseudonymize_uid(uid, KEY, root)
    assert mapped.startswith(root + ".")
    assert_valid_uid(mapped)


def test_a_root_too_long_for_enough_hash_bits_is_refused() -> None:
    with pytest.raises(ConfigError):
        pseudonymize_uid("1.2.3", KEY, "1.2.826.0.1.3680043.10.999.1234567890.1234567890")
    with pytest.raises(ConfigError):
        pseudonymize_uid("1.2.3", KEY, "1.02.3")


def test_short_keys_are_refused() -> None:
    from tasks.deid.pseudonyms import check_key

    with pytest.raises(ConfigError):
        check_key(b"short")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20).filter(str.strip), unique=True, max_size=30))
def test_patient_pseudonyms_are_distinct_and_stable(patient_ids: list[str]) -> None:
    stripped = {p.strip("\x00 ") for p in patient_ids}
    mapped = {pseudonymize_patient_id(p, KEY) for p in stripped}
    assert len(mapped) == len(stripped)
    for patient_id in stripped:
        pseudonym = pseudonymize_patient_id(patient_id, KEY)
        assert pseudonym == pseudonymize_patient_id(patient_id, KEY)
        assert pseudonym != pseudonymize_patient_id(patient_id, OTHER_KEY)
        assert len(pseudonym) <= 64


@given(st.text(min_size=1, max_size=20), st.integers(min_value=1, max_value=5000))
def test_date_shift_is_per_patient_into_the_past(patient_id: str, max_days: int) -> None:
    shift = date_shift_days(patient_id, KEY, max_days)
    assert -max_days <= shift <= -1
    assert shift == date_shift_days(patient_id, KEY, max_days)


def test_date_shifts_vary_between_patients() -> None:
    shifts = {date_shift_days(f"patient-{i}", KEY) for i in range(200)}
    assert len(shifts) > 100

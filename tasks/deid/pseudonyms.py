"""Keyed, deterministic pseudonyms: HMAC-SHA-256 of (secret key, original value).

Every batch, rerun and worker derives the same pseudonym from the same input without a shared
mapping table, and nothing here can map a pseudonym back to its identity without the key.
Each kind of value is hashed under its own domain label, so a PatientID that happens to equal a
UID string still yields unrelated pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re

from mira.errors import ConfigError

MIN_KEY_BYTES = 16
UID_MAX_CHARS = 64
MIN_UID_BITS = 96
DEFAULT_UID_ROOT = "2.25"
DEFAULT_MAX_SHIFT_DAYS = 365
PATIENT_ID_HEX_CHARS = 32

_UID_ROOT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def check_key(key: bytes) -> None:
    """Refuse a key too short to keep pseudonyms unguessable."""
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the pseudonym key must be at least {MIN_KEY_BYTES} bytes")


def keyed_digest(key: bytes, domain: str, value: str) -> bytes:
    """HMAC-SHA-256 of ``value`` under ``key``, separated by a domain label."""
    return hmac.digest(key, f"mira:{domain}\x00{value}".encode(), "sha256")


def check_uid_root(root: str) -> int:
    """Validate a UID root and return how many hash bits fit in a UID under it."""
    if not _UID_ROOT.fullmatch(root):
        raise ConfigError(f"invalid UID root {root!r}: dotted decimal without leading zeros")
    if root == DEFAULT_UID_ROOT:
        return 122
    digits = UID_MAX_CHARS - len(root) - 1
    bits = min(256, math.floor(digits * math.log2(10)))
    if bits < MIN_UID_BITS:
        raise ConfigError(f"UID root {root!r} leaves fewer than {MIN_UID_BITS} bits of pseudonym")
    return bits


def pseudonymize_uid(uid: str, key: bytes, root: str = DEFAULT_UID_ROOT) -> str:
    """Map a UID to its keyed pseudonym: the same input gives the same UID in every run.

    Under ``2.25`` the pseudonym is a UUID (version 8, RFC 9562: 122 hash bits) written as an
    integer, as PS3.5 B.2 requires for that arc. Under another root the integer holds as many hash
    bits as fit in 64 characters (at least 96).
    """
    bits = check_uid_root(root)
    digest = keyed_digest(key, "uid", uid.strip("\x00 "))
    if root == DEFAULT_UID_ROOT:
        number = _uuid8_int(digest[:16])
    else:
        number = int.from_bytes(digest, "big") >> (256 - bits)
    return f"{root}.{number}"


def _uuid8_int(raw: bytes) -> int:
    """The 128-bit integer of a version-8 UUID made of ``raw`` (RFC 9562 version/variant bits)."""
    number = int.from_bytes(raw, "big")
    number &= ~((0xF << 76) | (0x3 << 62))
    return number | (0x8 << 76) | (0x2 << 62)


def pseudonymize_patient_id(patient_id: str, key: bytes) -> str:
    """Map a PatientID to a 128-bit hexadecimal pseudonym (fits LO and storage paths)."""
    digest = keyed_digest(key, "patient-id", patient_id.strip("\x00 "))
    return digest.hex()[:PATIENT_ID_HEX_CHARS]


def date_shift_days(patient_id: str, key: bytes, max_days: int = DEFAULT_MAX_SHIFT_DAYS) -> int:
    """The per-patient date shift: a whole number of days in ``[-max_days, -1]``.

    Dates always move into the past (never into the future, never by zero); every date of one
    patient moves by the same amount, so intervals between studies are kept.
    """
    if max_days < 1:
        raise ConfigError(f"date_shift_max_days must be at least 1, not {max_days}")
    digest = keyed_digest(key, "date-shift", patient_id.strip("\x00 "))
    return -(1 + int.from_bytes(digest[:8], "big") % max_days)


def pseudonymize_slide(content_sha256: str, key: bytes) -> str:
    """Map a slide's content hash to a 128-bit hexadecimal slide pseudonym."""
    return keyed_digest(key, "slide", content_sha256).hex()[:PATIENT_ID_HEX_CHARS]


def content_sha256(data: bytes) -> str:
    """SHA-256 of bytes, hexadecimal: the identity of an object that has no better one."""
    return hashlib.sha256(data).hexdigest()

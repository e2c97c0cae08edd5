"""Identifiers of a record as search tokens, and the matcher that finds or removes them in text.

A token is searched case-insensitively and only as a whole word (the characters either side are
not letters or digits), so "ANN" does not hit "PLANNED". Tokens too short to mean anything are
never searched: at least ``MIN_ALPHA_TOKEN_CHARS`` characters when they hold a letter, at least
``MIN_TOKEN_DIGITS`` digits when they hold none (so sex "M", "1.0", "120" are ignored; a four-digit
number would hit every year and measurement). Names are split into their components, dates are
expanded into the free-text forms people type.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Iterable

MIN_ALPHA_TOKEN_CHARS = 3
MIN_TOKEN_DIGITS = 5
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_HYPHEN_SPLIT = re.compile(r"\s*-\s*")
_PART_SPLIT = re.compile(r"[,;\r\n]+")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
# What still looks like PHI in a descriptor after the record's own identifiers are removed.
RESIDUAL_PHI = re.compile(
    r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # a date
    r"|\d{5,}"  # an MRN, accession or compact date
    r"|\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b"  # a phone number
    r"|[\w.+-]+@[\w-]+\.[\w.]+"  # an e-mail address
    r"|\b(?:MRN|DOB|SSN)\b",
    re.IGNORECASE,
)
_LEFT = r"(?<![^\W_])(?<!\d\.)"
_RIGHT = r"(?![^\W_])(?!\.\d)"
_BYTES_LEFT = rb"(?<![A-Za-z0-9])(?<![0-9]\.)"
_BYTES_RIGHT = rb"(?![A-Za-z0-9])(?!\.[0-9])"


@functools.lru_cache(maxsize=65536)
def is_searchable(token: str) -> bool:
    """Whether a token is long enough to search without flooding false positives."""
    if _HAS_LETTER.search(token):
        return len(token) >= MIN_ALPHA_TOKEN_CHARS
    return len(_DIGIT.findall(token)) >= MIN_TOKEN_DIGITS


def name_tokens(value: str) -> set[str]:
    """A person name (PN): the whole name, its family, given and middle names, the parts of
    hyphenated names, and the usual "Given Family" / "Family, Given" orders. Components are not
    split on spaces: placeholder names such as "Enter text" would turn common words into tokens.
    """
    tokens = {value, value.replace("^", " ").strip()}
    for group in value.split("="):
        parts = [p.strip() for p in group.split("^")[:3] if p.strip()]
        tokens.update(parts)
        tokens.update(word for part in parts for word in _HYPHEN_SPLIT.split(part))
        if len(parts) >= 2:
            tokens.add(f"{parts[1]} {parts[0]}")
            tokens.add(f"{parts[0]}, {parts[1]}")
    return tokens


def date_forms(value: str) -> set[str]:
    """A DA (or the date of a DT) in DICOM form and the free-text forms people write."""
    match = _DA.match(value.strip())
    if not match:
        return {value} if value.strip() else set()
    try:
        day = datetime.date(*(int(g) for g in match.groups()))
    except ValueError:
        return {match.group(0)}
    y, m, d = day.year, day.month, day.day
    mon = _MONTHS[m - 1]
    return {
        f"{y:04d}{m:02d}{d:02d}",
        f"{y:04d}-{m:02d}-{d:02d}",
        f"{y:04d}/{m:02d}/{d:02d}",
        f"{y:04d}.{m:02d}.{d:02d}",
        f"{m:02d}/{d:02d}/{y:04d}",
        f"{m:02d}/{d:02d}/{y % 100:02d}",
        f"{m}/{d}/{y:04d}",
        f"{d:02d}/{m:02d}/{y:04d}",
        f"{d:02d}/{m:02d}/{y % 100:02d}",
        f"{d:02d}.{m:02d}.{y:04d}",
        f"{d:02d}-{m:02d}-{y:04d}",
        f"{m:02d}-{d:02d}-{y:04d}",
        f"{d:02d}-{mon}-{y:04d}",
        f"{d} {mon} {y:04d}",
        f"{mon} {d}, {y:04d}",
    }


@functools.lru_cache(maxsize=8192)
def value_tokens(vr: str, value: str) -> frozenset[str]:
    """The search tokens of one attribute value, by VR (multi-values split on backslash)."""
    if vr == "UI":
        return frozenset(u.strip("\x00 ") for u in value.split("\\") if is_searchable(u))
    tokens: set[str] = set()
    for item in value.split("\\"):
        item = item.strip("\x00 ")
        if not item:
            continue
        if vr == "PN":
            tokens |= name_tokens(item)
        elif vr in {"DA", "DT"}:
            tokens |= date_forms(item[:8])
        else:
            tokens.add(item)
            tokens.update(p.strip() for p in _PART_SPLIT.split(item) if p.strip())
            digits = "".join(_DIGIT.findall(item))
            if len(digits) >= 7 and not _HAS_LETTER.search(item) and "." not in item:
                tokens.add(digits)  # a phone number written with separators
    return frozenset(t for t in tokens if is_searchable(t))


class IdentifierMatcher:
    """Finds and removes a record's identifier tokens in text or raw bytes."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        tokens = {t.casefold() for t in identifiers if is_searchable(t)}
        self.tokens: tuple[str, ...] = tuple(sorted(tokens, key=lambda t: (-len(t), t)))
        self._bytes_tokens = tuple({t.encode("utf-8") for t in self.tokens})
        self._pattern: re.Pattern[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.tokens)

    @property
    def pattern(self) -> re.Pattern[str]:
        """One alternation of every token with word boundaries (compiled on first use)."""
        if self._pattern is None:
            body = "|".join(re.escape(t) for t in self.tokens) or r"(?!x)x"
            self._pattern = re.compile(f"{_LEFT}(?:{body}){_RIGHT}", re.IGNORECASE)
        return self._pattern

    def mentions(self, text: str) -> bool:
        """Whether the text holds any token as a whole word."""
        folded = text.casefold()
        if not any(token in folded for token in self.tokens):
            return False
        return self.pattern.search(text) is not None

    def might_mention_bytes(self, raw: bytes) -> bool:
        """Cheap pre-check on raw bytes (any token as a substring, ASCII case-insensitive)."""
        lowered = raw.lower()
        return any(token in lowered for token in self._bytes_tokens)

    def find(self, text: str) -> list[tuple[int, str]]:
        """Every (offset, matched text) of a token in the text."""
        folded = text.casefold()
        if not any(token in folded for token in self.tokens):
            return []
        return [(m.start(), m.group(0)) for m in self.pattern.finditer(text)]

    def remove(self, text: str) -> str:
        """The text with every token removed and the whitespace left behind collapsed."""
        stripped = self.pattern.sub(" ", text)
        return " ".join(stripped.split())


def bytes_pattern(tokens: Iterable[str]) -> re.Pattern[bytes]:
    """A bytes pattern of whole-word tokens (ASCII case-insensitive) for raw scans."""
    encoded = sorted({t.encode("utf-8") for t in tokens}, key=lambda t: (-len(t), t))
    body = b"|".join(re.escape(t) for t in encoded) or rb"(?!x)x"
    return re.compile(_BYTES_LEFT + b"(?:" + body + b")" + _BYTES_RIGHT, re.IGNORECASE)


def clean_text(text: str, matcher: IdentifierMatcher, free_text: bool) -> str | None:
    """Remove the record's identifiers from a descriptor; ``None`` when safety cannot be assured.

    Free text (descriptors, comments, SR text) must also show no residual date, long number,
    phone number or e-mail address once the known identifiers are gone.
    """
    cleaned = matcher.remove(text) if matcher.mentions(text) else text
    if free_text and RESIDUAL_PHI.search(cleaned):
        return None
    return cleaned

"""Leak check: search every output (its path, its decoded values and its raw bytes) for the
identifiers collected from the input.

Values are searched where they can be decoded: every DICOM element at every depth (file meta,
private tags and UN values included, pixel data excepted) and every TIFF tag of every page; each
hit names its tag path, e.g. ``(0008,1110)[0].(0008,1155)`` or ``page[2].ImageDescription``.
Then the raw bytes are searched for the longer tokens (``RAW_MIN_TOKEN_CHARS``), which finds what
no decoder shows (pixel data, compressed tiles, unknown formats); a raw hit of a token already
found in a value is not repeated. Text files (JSON, CSV, YAML...) are searched as text.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import tifffile
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tasks.deid.dicom import collect_dicom_identifiers
from tasks.deid.identifiers import IdentifierMatcher, is_searchable
from tasks.deid.slide import collect_slide_identifiers
from tasks.deid.vocabulary import is_exempt

# Shorter tokens match random binary (pixels, compressed tiles) too often to mean anything there.
RAW_MIN_TOKEN_CHARS = 6
_TEXT_PROBE_BYTES = 65536
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


@dataclass(frozen=True)
class PhiHit:
    """One identifier found in one output. The identifier itself is not kept (it is PHI):
    ``identifier_sha256`` lets whoever holds the identifiers tell which one it was."""

    file: str
    location: str
    identifier_sha256: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}"


def identifier_digest(token: str) -> str:
    """SHA-256 (hex) of a case-folded identifier, as recorded in a :class:`PhiHit`."""
    return hashlib.sha256(token.casefold().encode("utf-8")).hexdigest()


def collect_identifiers(source: Any) -> set[str]:
    """The identifier tokens of an input: a pydicom Dataset, a ``tifffile.TiffFile``, the bytes
    of a DICOM or TIFF file, or a path to one. A DICOM file whose preamble is a TIFF header (a
    dual-personality file, pydicom's ``CT_small.dcm``) is read as DICOM."""
    if isinstance(source, Dataset):
        return collect_dicom_identifiers(source)
    if isinstance(source, tifffile.TiffFile):
        return collect_slide_identifiers(source)
    if isinstance(source, str | Path):
        path = Path(source)
        with path.open("rb") as handle:
            head = handle.read(132)
        if _is_tiff(head) and not _is_dicom(head):
            with tifffile.TiffFile(path) as tif:
                return collect_slide_identifiers(tif) | _path_tokens(path)
        return collect_dicom_identifiers(pydicom.dcmread(path, force=True)) | _path_tokens(path)
    if isinstance(source, bytes | bytearray):
        if _is_tiff(bytes(source[:4])) and not _is_dicom(bytes(source[:132])):
            with tifffile.TiffFile(io.BytesIO(source)) as tif:
                return collect_slide_identifiers(tif)
        return collect_dicom_identifiers(pydicom.dcmread(io.BytesIO(source), force=True))
    raise TypeError(f"cannot collect identifiers from {type(source).__name__}")


def _path_tokens(path: Path) -> set[str]:
    """The file name of an input, which often carries a name or accession number."""
    return {t for t in (path.name, path.stem) if is_searchable(t)}


def scan_for_phi(
    files: Iterable[tuple[str, bytes]],
    identifiers: Iterable[str],
    parsed: Mapping[str, Dataset] | None = None,
) -> list[PhiHit]:
    """Every place where an identifier occurs in the given (path or key, content) outputs.

    ``parsed`` holds, by name, a DICOM output already read back from its bytes
    (``read_output``), so the caller that needs its values too reads it once."""
    matcher = IdentifierMatcher(identifiers)
    if not matcher:
        return []
    raw_tokens = tuple(t.encode("utf-8") for t in matcher.tokens if len(t) >= RAW_MIN_TOKEN_CHARS)
    hits: list[PhiHit] = []
    for name, data in files:
        dataset = (parsed or {}).get(name)
        hits.extend(_scan_one(name, bytes(data), matcher, raw_tokens, dataset))
    return hits


def read_output(data: bytes) -> Dataset | None:
    """A DICOM output read back from its bytes, as the scan reads it; None when unreadable."""
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return None


SCAN_CHUNK_BYTES = 32 * 1024 * 1024


def scan_slide_file(name: str, path: str | Path, identifiers: Iterable[str]) -> list[PhiHit]:
    """The hits of one slide on disk, in bounded memory: its name, the text tags of every page,
    then its raw bytes in overlapping chunks (slides are too large to hold whole)."""
    matcher = IdentifierMatcher(identifiers)
    if not matcher:
        return []
    found: list[tuple[str, str]] = [("path", text) for _, text in matcher.find(name)]
    with tifffile.TiffFile(path) as tif:
        found += _page_tag_hits(tif, matcher)
    seen = {token.casefold() for location, token in found if location != "path"}
    raw_tokens = tuple(t.encode("utf-8") for t in matcher.tokens if len(t) >= RAW_MIN_TOKEN_CHARS)
    for offset, token in _raw_hits_in_file(Path(path), raw_tokens):
        if token not in seen:
            found.append((f"bytes@{offset}", token))
    return [PhiHit(name, location, identifier_digest(token)) for location, token in found]


def _raw_hits_in_file(path: Path, tokens: tuple[bytes, ...]) -> list[tuple[int, str]]:
    """``_raw_hits`` over a file read chunk by chunk; chunks overlap by the longest token."""
    if not tokens:
        return []
    overlap = max(len(t) for t in tokens) + 1
    hits: set[tuple[int, str]] = set()
    with path.open("rb") as stream:
        base, carry = 0, b""
        while chunk := stream.read(SCAN_CHUNK_BYTES):
            window = carry + chunk
            hits |= {(base + offset, token) for offset, token in _raw_hits(window, tokens)}
            carry = window[-overlap:]
            base += len(window) - len(carry)
    return sorted(hits)


def _scan_one(
    name: str,
    data: bytes,
    matcher: IdentifierMatcher,
    raw_tokens: tuple[bytes, ...],
    dataset: Dataset | None = None,
) -> list[PhiHit]:
    """The hits of one output: its name, its decoded values, then its raw bytes."""
    found: list[tuple[str, str]] = [("path", text) for _, text in matcher.find(name)]
    raw = data
    if _is_dicom(data):
        hits, exempt = _dicom_hits(data, matcher, dataset)
        found += hits
        raw = _masked(data, exempt)
    elif _is_tiff(data[:4]):
        found += _tiff_hits(data, matcher)
    elif _is_text(data):
        text = data.decode("utf-8")
        found += [(f"text@{offset}", token) for offset, token in matcher.find(text)]
    seen = {token.casefold() for location, token in found if location != "path"}
    for offset, token in _raw_hits(raw, raw_tokens):
        if token not in seen:
            found.append((f"bytes@{offset}", token))
    return [PhiHit(name, location, identifier_digest(token)) for location, token in found]


def _masked(data: bytes, exempt: set[bytes]) -> bytes:
    """The bytes with every exempt value (mira's own text, standard terms) blanked, so the raw
    scan does not find in them what the value scan left out on purpose."""
    for value in sorted(exempt, key=len, reverse=True):
        data = data.replace(value, b"\x00" * len(value))
    return data


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_text(data: bytes) -> bool:
    """Whether the bytes are UTF-8 text without NULs (JSON, CSV, YAML, XML...)."""
    if b"\x00" in data[:_TEXT_PROBE_BYTES]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _dicom_hits(
    data: bytes, matcher: IdentifierMatcher, dataset: Dataset | None = None
) -> tuple[list[tuple[str, str]], set[bytes]]:
    """Hits in every decoded element of a Part-10 file, file meta included, and the encoded
    values that held a token but are exempt (see :mod:`tasks.deid.vocabulary`). ``dataset``
    is ``data`` already read back (``read_output``)."""
    exempt: set[bytes] = set()
    dataset = dataset if dataset is not None else read_output(data)
    if dataset is None:
        return [], exempt
    meta = dataset.file_meta
    found = _dataset_hits(meta, "meta.", matcher, exempt) if meta else []
    return found + _dataset_hits(dataset, "", matcher, exempt), exempt


def _dataset_hits(
    dataset: Dataset, prefix: str, matcher: IdentifierMatcher, exempt: set[bytes]
) -> list[tuple[str, str]]:
    """Hits in one dataset and, recursively, in the items of its sequences; values exempt from
    the scan are added to ``exempt`` instead."""
    found: list[tuple[str, str]] = []
    for tag in list(dataset.keys()):
        location = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if tag in _PIXEL_TAGS:
            continue
        try:
            elem = dataset[tag]
            value = elem.value
        except Exception:
            raw = dataset.get_item(tag)
            value = raw.value if raw is not None else None
            elem = None
        if elem is not None and elem.VR == "SQ":
            for index, item in enumerate(value or []):
                found += _dataset_hits(item, f"{location}[{index}].", matcher, exempt)
            continue
        text = _as_text(value)
        hits = [(location, token) for _, token in matcher.find(text)]
        vr = elem.VR if elem is not None else ""
        if hits and is_exempt(dataset, tag, vr, text, top_level=not prefix):
            exempt.add(text.encode("latin-1", errors="ignore"))
            continue
        found += hits
    return found


def _as_text(value: Any) -> str:
    """A decoded element value as text (bytes read as Latin-1, so every byte survives)."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_as_text(v) for v in value)
    return str(value)


def _tiff_hits(data: bytes, matcher: IdentifierMatcher) -> list[tuple[str, str]]:
    """Hits in the text and byte tags of every page of a TIFF file."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return _page_tag_hits(tif, matcher)
    except Exception:
        return []


def _page_tag_hits(tif: tifffile.TiffFile, matcher: IdentifierMatcher) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for index, page in enumerate(tif.pages):
        for tag in page.tags:  # type: ignore[union-attr]
            if isinstance(tag.value, str | bytes):
                text = _as_text(tag.value)
                found += [(f"page[{index}].{tag.name}", t) for _, t in matcher.find(text)]
    return found


def _raw_hits(data: bytes, tokens: tuple[bytes, ...]) -> list[tuple[int, str]]:
    """Whole-word, ASCII case-insensitive occurrences of tokens in raw bytes."""
    if not tokens:
        return []
    lowered = data.lower()
    hits: list[tuple[int, str]] = []
    for token in tokens:
        start = lowered.find(token)
        while start != -1:
            end = start + len(token)
            if _boundary(lowered, start - 1, start) and _boundary(lowered, end, end - 1):
                hits.append((start, token.decode("utf-8")))
            start = lowered.find(token, start + 1)
    return hits


def _boundary(data: bytes, outside: int, inside: int) -> bool:
    """Whether the byte just outside a match does not continue the word (or the number)."""
    if outside < 0 or outside >= len(data):
        return True
    char = data[outside : outside + 1]
    if char.isalnum():
        return False
    if char == b"." and data[inside : inside + 1].isdigit():
        beyond = outside - 1 if outside < inside else outside + 1
        return not data[beyond : beyond + 1].isdigit()
    return True

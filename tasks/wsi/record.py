"""The completion record of a published pyramid: what it was made from, and how.

It sits in the root group's ``attributes.mira``, written last, so its presence means the pyramid
is complete; a rerun compares it with the source and the options to decide whether to convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CompletionRecord:
    """The source (key, SHA-256, size, etag) and the output (options, levels, shape) of a pyramid."""

    source_key: str
    source_sha256: str
    source_size: int | None = None
    source_etag: str | None = None
    mira_version: str = ""
    layout_version: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    slide: Mapping[str, Any] = field(default_factory=dict)
    levels: int = 0
    shape: tuple[int, ...] = ()
    bytes_raw: int = 0

    @classmethod
    def from_attributes(cls, value: object) -> CompletionRecord | None:
        """The record in a root group's ``mira`` attribute; None when absent or not a record."""
        if not isinstance(value, Mapping) or not value.get("source_sha256"):
            return None
        return cls(
            source_key=str(value.get("source_key", "")),
            source_sha256=str(value["source_sha256"]),
            source_size=value.get("source_size"),
            source_etag=value.get("source_etag"),
            mira_version=str(value.get("mira_version", "")),
            layout_version=int(value.get("layout_version", 0)),
            options=dict(value.get("options") or {}),
            slide=dict(value.get("slide") or {}),
            levels=int(value.get("levels", 0)),
            shape=tuple(int(n) for n in value.get("shape") or ()),
            bytes_raw=int(value.get("bytes_raw", 0)),
        )

    def to_attributes(self) -> dict[str, Any]:
        """The JSON form stored in the root group's attributes."""
        document = asdict(self)
        document["options"], document["slide"] = dict(self.options), dict(self.slide)
        document["shape"] = list(self.shape)
        return document

    @property
    def mpp(self) -> float | None:
        """Level 0's pixel size in micrometres, when the slide said."""
        value = self.slide.get("mpp_x")
        return float(value) if value is not None else None

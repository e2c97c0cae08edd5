"""The de-identification policy of a project: PS3.15 options, safe private tags, UID root,
burned-in text regions and slide metadata keys, loaded from a per-project profile file.

A profile file is JSON (``deid-profile.json``) or YAML (``.yaml``/``.yml``); every key is
optional and falls back to :meth:`DeidPolicy.default`::

    {
      "name": "my-project", "version": "3",
      "options": {"retain_device_identity": true, "clean_graphics": false},
      "safe_private": ["0019,GEMS_ACQU_01,0C"],
      "uid_root": "2.25",
      "date_shift_max_days": 365,
      "burned_in_modalities": ["US", "SC", "OT", "XA", "RF", "NM"],
      "ocr": true, "ocr_pad": 4, "ocr_negative_review": ["US"],
      "scrub_rules": [
        {"modality": "US", "manufacturer": "ACME", "model": "Sono 5",
         "regions": [{"top": 0, "left": 0, "height": 0.1, "width": 1.0}]}
      ],
      "slide_safe_keys": ["AppMag", "MPP"]
    }

``options`` lists only the options to change; unknown keys are errors, not silently ignored.
``ocr`` (default true) reads every frame of an image that may carry burned-in text and blanks the
text boxes it finds, padded by ``ocr_pad`` pixels; ``ocr_negative_review`` lists the modalities
(``"*"``: all) whose images are held for review instead of published when OCR finds no text.
With ``ocr`` false, such an image needs a region rule or is refused.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mira.errors import ConfigError
from tasks.deid.pseudonyms import DEFAULT_MAX_SHIFT_DAYS, DEFAULT_UID_ROOT, check_uid_root


class DeidOption(enum.Enum):
    """The options of PS3.15 Table E.1-1, named as in the project's table file."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"


# DCM codes of CID 7050 "De-identification Method", recorded in each output.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")
OPTION_CODES: Mapping[DeidOption, tuple[str, str]] = {
    DeidOption.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    DeidOption.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    DeidOption.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    DeidOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    DeidOption.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    DeidOption.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    DeidOption.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

DEFAULT_OPTIONS = frozenset(
    {
        DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
        DeidOption.CLEAN_DESCRIPTORS,
        DeidOption.CLEAN_STRUCTURED_CONTENT,
    }
)
# Modalities whose images OCR reads for burned-in text (screens, scanner banners, angiography
# and nuclear medicine overlays); derived/secondary images and BurnedInAnnotation YES are read too.
DEFAULT_BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XA", "RF", "NM"})
# Pixels added around each detected text box before it is blanked (anti-aliased edges, descenders).
DEFAULT_OCR_PAD = 4
# Aperio ImageDescription keys kept in a de-identified slide: optics and geometry only.
DEFAULT_SLIDE_SAFE_KEYS = frozenset(
    {
        "AppMag",
        "MPP",
        "StripeWidth",
        "Left",
        "Top",
        "LineCameraSkew",
        "LineAreaXOffset",
        "LineAreaYOffset",
        "Focus Offset",
        "OriginalWidth",
        "OriginalHeight",
        "Originalheight",
        "Filtered",
        "Exposure Time",
        "Exposure Scale",
        "Gamma",
        "ICC Profile",
    }
)
SLIDE_DEVICE_KEYS = frozenset({"ScanScope ID"})


@dataclass(frozen=True)
class Region:
    """A rectangle to blank, as fractions of the image height/width (or pixels)."""

    top: float
    left: float
    height: float
    width: float
    unit: str = "fraction"

    def bounds(self, rows: int, columns: int) -> tuple[int, int, int, int]:
        """Return (row0, row1, col0, col1) in pixels, clipped to the image and rounded outwards."""
        if self.unit == "fraction":
            r0, c0 = int(self.top * rows), int(self.left * columns)
            r1 = math.ceil((self.top + self.height) * rows - 1e-9)
            c1 = math.ceil((self.left + self.width) * columns - 1e-9)
        else:
            r0, c0 = int(self.top), int(self.left)
            r1, c1 = int(self.top + self.height), int(self.left + self.width)
        return max(0, r0), min(rows, r1), max(0, c0), min(columns, c1)


@dataclass(frozen=True)
class ScrubRule:
    """Where burned-in text sits for images of one modality (and optionally one vendor/model).

    ``manufacturer`` and ``model`` match case-insensitive substrings of Manufacturer (0008,0070)
    and Manufacturer's Model Name (0008,1090); ``modality`` ``"*"`` matches any modality.
    """

    modality: str
    regions: tuple[Region, ...]
    manufacturer: str | None = None
    model: str | None = None

    def specificity(self, modality: str, manufacturer: str, model: str) -> int:
        """How many keys of the rule match (higher is more specific); -1 when it does not apply."""
        score = 0
        for wanted, actual in ((self.manufacturer, manufacturer), (self.model, model)):
            if wanted is not None:
                if wanted.casefold() not in actual.casefold():
                    return -1
                score += 1
        if self.modality != "*":
            if self.modality.upper() != modality.upper():
                return -1
            score += 1
        return score


@dataclass(frozen=True)
class PrivateTag:
    """A private attribute named portably: group, private creator, element offset (0x00-0xFF)."""

    group: int
    creator: str
    offset: int

    @classmethod
    def parse(cls, text: str) -> PrivateTag:
        """Parse ``"gggg,CREATOR,ee"`` (hexadecimal group and element offset)."""
        try:
            group_text, creator, offset_text = (part.strip() for part in text.split(","))
            group, offset = int(group_text, 16), int(offset_text, 16)
        except ValueError as err:
            raise ConfigError(f"safe private tag {text!r} is not 'gggg,CREATOR,ee'") from err
        if group % 2 == 0 or not 0 <= offset <= 0xFF or not creator:
            raise ConfigError(f"safe private tag {text!r}: odd group, creator, offset 00-FF")
        return cls(group, creator, offset)


# Default: blank the top tenth of every ultrasound frame, where scanners print the banner with
# patient name, ID, date and institution. Other modalities need a rule from the project profile.
DEFAULT_SCRUB_RULES = (ScrubRule(modality="US", regions=(Region(0.0, 0.0, 0.1, 1.0),)),)


@dataclass(frozen=True)
class DeidPolicy:
    """Everything that decides how a project's data are de-identified; recorded in each output."""

    name: str = "mira-default"
    version: str = "1"
    options: frozenset[DeidOption] = DEFAULT_OPTIONS
    safe_private: tuple[PrivateTag, ...] = ()
    uid_root: str = DEFAULT_UID_ROOT
    date_shift_max_days: int = DEFAULT_MAX_SHIFT_DAYS
    burned_in_modalities: frozenset[str] = DEFAULT_BURNED_IN_MODALITIES
    scrub_rules: tuple[ScrubRule, ...] = DEFAULT_SCRUB_RULES
    slide_safe_keys: frozenset[str] = field(default=DEFAULT_SLIDE_SAFE_KEYS)
    ocr: bool = True
    ocr_pad: int = DEFAULT_OCR_PAD
    ocr_negative_review: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_uid_root(self.uid_root)
        if not 0 <= self.ocr_pad <= 64:
            raise ConfigError("ocr_pad must be 0 to 64 pixels")
        full = DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in self.options
        if full and DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            raise ConfigError("choose one of the full-dates and modified-dates options")
        if self.date_shift_max_days < 1:
            raise ConfigError("date_shift_max_days must be at least 1")

    @classmethod
    def default(cls) -> DeidPolicy:
        """Basic Profile + Modified Dates, Patient Characteristics, Clean Descriptors and Clean
        Structured Content; no private attribute kept; ``2.25`` UIDs; US banner scrubbing."""
        return cls()

    def has(self, option: DeidOption) -> bool:
        """Whether an option is in force (safe private: only when a safe list is configured)."""
        if option is DeidOption.RETAIN_SAFE_PRIVATE:
            return bool(self.safe_private)
        return option in self.options

    def method_codes(self) -> tuple[tuple[str, str], ...]:
        """The DCM codes naming the profile and every option in force, in code order."""
        codes = [code for option, code in OPTION_CODES.items() if self.has(option)]
        return (BASIC_PROFILE_CODE, *sorted(codes))

    def method_description(self) -> str:
        """DeidentificationMethod text (LO, 64 characters at most)."""
        return f"mira PS3.15 E.1-1 profile {self.name} v{self.version}"[:64]

    def reviews_ocr_negative(self, modality: str) -> bool:
        """Whether an image of this modality in which OCR found no text is held for review."""
        return "*" in self.ocr_negative_review or modality.upper() in self.ocr_negative_review

    def scrub_rule_for(self, modality: str, manufacturer: str, model: str) -> ScrubRule | None:
        """The most specific scrub rule that applies (the first in file order on ties)."""
        best: ScrubRule | None = None
        best_score = -1
        for rule in self.scrub_rules:
            score = rule.specificity(modality, manufacturer, model)
            if score > best_score:
                best, best_score = rule, score
        return best


def policy_for(profile: str | Path | None) -> DeidPolicy:
    """The project's profile file when one is configured (``Settings.deid_profile``), else the
    default profile."""
    return load_policy(profile) if profile else DeidPolicy.default()


def load_policy(path: str | Path) -> DeidPolicy:
    """Read a project's profile file (JSON, or YAML by extension) into a :class:`DeidPolicy`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read de-identification profile {path}: {err}") from err
    if path.suffix.lower() in {".yaml", ".yml"}:
        document = _parse_yaml(text, path)
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON: {err}") from err
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the profile must be a mapping")
    return policy_from_mapping(document, source=str(path))


def _parse_yaml(text: str, path: Path) -> Any:
    """Parse YAML with PyYAML's safe loader."""
    try:
        import yaml
    except ImportError as err:
        raise ConfigError(f"{path}: YAML profiles need PyYAML; use JSON instead") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err


_POLICY_KEYS = frozenset(
    {
        "name",
        "version",
        "options",
        "safe_private",
        "uid_root",
        "date_shift_max_days",
        "burned_in_modalities",
        "scrub_rules",
        "slide_safe_keys",
        "ocr",
        "ocr_pad",
        "ocr_negative_review",
    }
)


def policy_from_mapping(document: Mapping[str, Any], source: str = "profile") -> DeidPolicy:
    """Build a policy from a parsed profile document; unknown keys are errors."""
    unknown = set(document) - _POLICY_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown profile keys {sorted(unknown)}")
    policy = DeidPolicy.default()
    changes: dict[str, Any] = {}
    for key in ("name", "version", "uid_root"):
        if key in document:
            changes[key] = str(document[key])
    if "date_shift_max_days" in document:
        changes["date_shift_max_days"] = int(document["date_shift_max_days"])
    if "options" in document:
        changes["options"] = _parse_options(document["options"], policy.options, source)
    if "safe_private" in document:
        changes["safe_private"] = tuple(PrivateTag.parse(str(t)) for t in document["safe_private"])
    if "burned_in_modalities" in document:
        changes["burned_in_modalities"] = frozenset(
            str(m).upper() for m in document["burned_in_modalities"]
        )
    if "scrub_rules" in document:
        changes["scrub_rules"] = tuple(_parse_rule(r, source) for r in document["scrub_rules"])
    if "slide_safe_keys" in document:
        changes["slide_safe_keys"] = frozenset(str(k) for k in document["slide_safe_keys"])
    changes.update(_parse_ocr(document, source))
    try:
        return replace(policy, **changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from err


def _parse_ocr(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The OCR keys of a profile: ``ocr`` (bool), ``ocr_pad`` (pixels), ``ocr_negative_review``."""
    changes: dict[str, Any] = {}
    if "ocr" in document:
        if not isinstance(document["ocr"], bool):
            raise ConfigError(f"{source}: 'ocr' must be true or false")
        changes["ocr"] = document["ocr"]
    if "ocr_pad" in document:
        pad = document["ocr_pad"]
        if isinstance(pad, bool) or not isinstance(pad, int):
            raise ConfigError(f"{source}: 'ocr_pad' must be a whole number of pixels")
        changes["ocr_pad"] = pad
    if "ocr_negative_review" in document:
        changes["ocr_negative_review"] = frozenset(
            str(m).upper() for m in document["ocr_negative_review"]
        )
    return changes


def _parse_options(
    given: Any, defaults: frozenset[DeidOption], source: str
) -> frozenset[DeidOption]:
    """Apply ``{"option_name": true/false}`` switches to the default options."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{source}: 'options' must map option names to true/false")
    options = set(defaults)
    for name, enabled in given.items():
        try:
            option = DeidOption(name)
        except ValueError as err:
            raise ConfigError(f"{source}: unknown option {name!r}") from err
        if not isinstance(enabled, bool):
            raise ConfigError(f"{source}: option {name!r} must be true or false")
        if enabled:
            options.add(option)
        else:
            options.discard(option)
    return frozenset(options)


def _parse_rule(rule: Any, source: str) -> ScrubRule:
    """Parse one burned-in text rule."""
    if not isinstance(rule, Mapping) or "regions" not in rule:
        raise ConfigError(f"{source}: each scrub rule needs 'modality' and 'regions'")
    regions = tuple(_parse_region(r, source) for r in rule["regions"])
    if not regions:
        raise ConfigError(f"{source}: a scrub rule needs at least one region")
    return ScrubRule(
        modality=str(rule.get("modality", "*")),
        regions=regions,
        manufacturer=_optional_text(rule.get("manufacturer")),
        model=_optional_text(rule.get("model")),
    )


def _parse_region(region: Any, source: str) -> Region:
    """Parse ``{"top", "left", "height", "width", "unit"}``; fractions must lie in [0, 1]."""
    try:
        parsed = Region(
            top=float(region["top"]),
            left=float(region["left"]),
            height=float(region["height"]),
            width=float(region["width"]),
            unit=str(region.get("unit", "fraction")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{source}: region {region!r} needs top, left, height, width") from err
    values: Iterable[float] = (parsed.top, parsed.left, parsed.height, parsed.width)
    if parsed.unit not in {"fraction", "pixel"} or min(values) < 0:
        raise ConfigError(f"{source}: region {region!r}: unit fraction|pixel, no negatives")
    if (
        parsed.unit == "fraction"
        and max(parsed.top + parsed.height, parsed.left + parsed.width) > 1
    ):
        raise ConfigError(f"{source}: fractional region {region!r} extends past the image")
    return parsed


def _optional_text(value: Any) -> str | None:
    """``None`` stays ``None``; anything else becomes its string."""
    return None if value is None else str(value)

"""The quality stage's configuration: image-check thresholds and GX suites, as pydantic models.

The defaults ship as ``quality.yaml`` beside this module; a site's override file is merged on top
key by key. One module for every model, so the checks and the stage read the same types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mira.errors import ConfigError

Severity = Literal["fail", "warn", "info"]
DEFAULT_CONFIG_NAME = "quality.yaml"


class ExpectationSpec(BaseModel):
    """One configured check: a GX expectation class, its arguments and a mira severity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expectation: str
    severity: Severity = "fail"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    columns: list[str] | Literal["$string_columns"] | None = None
    redact: bool = False
    enabled: bool = True
    description: str = ""


SuitesConfig = dict[str, dict[str, ExpectationSpec]]


class CheckConfig(BaseModel):
    """Threshold and severity of one image check (per-modality thresholds optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float
    severity: Severity = "fail"
    by_modality: dict[str, float] = Field(default_factory=dict)

    def threshold_for(self, modality: str) -> float:
        return self.by_modality.get(modality, self.threshold)


class DicomChecks(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    resolution: CheckConfig
    contrast: CheckConfig
    blur: CheckConfig
    empty: CheckConfig


class DicomQAConfig(BaseModel):
    """How DICOM instances are judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    skip_modalities: tuple[str, ...] = ()
    crop_px: int = Field(512, gt=8)
    checks: DicomChecks


class SlideChecks(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tissue_fraction: CheckConfig
    out_of_focus: CheckConfig
    pen_marks: CheckConfig


class SlideQAConfig(BaseModel):
    """How slides are judged: overview masks, then sampled focus tiles of a mid level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thumbnail_px: int = Field(512, gt=16)
    tile_px: int = Field(256, gt=8)
    focus_downsample: float = Field(2.0, ge=1.0)
    min_tile_tissue: float = Field(0.5, ge=0.0, le=1.0)
    tile_sharpness: float = Field(0.8, ge=0.0)
    max_tiles: int = Field(64, gt=0)
    checks: SlideChecks


class ImageQAConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_size: int = Field(8, gt=0)
    thumbnail_px: int = Field(256, gt=16)
    dicom: DicomQAConfig
    slide: SlideQAConfig


class QualityConfig(BaseModel):
    """Thresholds of the image checks and the GX suites (see ``tasks/quality/quality.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    image_qa: ImageQAConfig
    suites: SuitesConfig

    def sha256(self) -> str:
        """A fingerprint of the effective configuration, recorded with every result."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in ``override`` replaces the default."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping from ``path``."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read quality config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"quality config {path} must hold a mapping")
    return data


def default_config_text() -> str:
    return resources.files("tasks.quality").joinpath(DEFAULT_CONFIG_NAME).read_text("utf-8")


def load_quality_config(path: str | Path | None = None) -> QualityConfig:
    """The defaults with the override file ``path`` (``Settings.quality_config``) merged on top."""
    data = yaml.safe_load(default_config_text())
    override = path
    if override:
        data = merge(data, read_config_file(override))
    try:
        return QualityConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid quality config ({override or 'defaults'}): {err}") from err

"""Great Expectations (GX Core 1.x) suites run on the catalog frames of one batch.

The suites come from configuration (``quality.yaml``): one per frame, ``instances`` and
``slides`` (the batch's catalog rows) and ``series`` (derived per series: slice spacing). Each
expectation carries a mira severity (``fail`` gates the batch, ``warn`` is reported), mapped
onto GX's own severity. Values of ``redact`` expectations (possible PHI) are removed from every
stored result before anything leaves the working folder; only the offending keys are kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mira.errors import ConfigError
from storage import Store
from tasks import layout
from tasks.dataset import read_table
from tasks.quality.config import ExpectationSpec, Severity, SuitesConfig

log = logging.getLogger(__name__)

FRAMES = ("instances", "series", "slides")
GX_SEVERITY = {"fail": "critical", "warn": "warning", "info": "info"}
STRING_COLUMNS = "$string_columns"
DERIVED_COLUMNS = frozenset({"phi_identifier_hits"})
MIN_IDENTIFIER_CHARS = 3
KEYS_IN_DETAIL = 5
RESULT_FORMAT = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 20,
    "unexpected_index_column_names": ["key"],
}
# Result fields that may hold the offending values themselves.
VALUE_FIELDS = (
    "partial_unexpected_list",
    "partial_unexpected_counts",
    "unexpected_list",
    "unexpected_rows",
)


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation on one frame of a batch."""

    frame: str
    check: str
    severity: Severity
    passed: bool
    expectation: str
    unexpected: int | None
    keys: tuple[str, ...]
    detail: str

    def quality_row(self, batch: str) -> dict[str, Any]:
        """A batch-level row (key "") of the catalog ``quality`` table."""
        return {
            "batch": batch,
            "key": "",
            "check": f"{self.frame}.{self.check}",
            "severity": self.severity,
            "passed": self.passed,
            "score": float(self.unexpected) if self.unexpected is not None else None,
            "threshold": 0.0 if self.unexpected is not None else None,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ValidationRun:
    """Every outcome of a batch, and the (redacted) GX files that Data Docs are built from."""

    outcomes: tuple[ExpectationOutcome, ...]
    gx_files: tuple[tuple[str, bytes], ...]


def batch_frame(store: Store, table: str, batch: str) -> pd.DataFrame:
    """The catalog rows of ``batch`` in ``table`` (empty when the table has none)."""
    data = read_table(store, table)
    if not data.num_rows or "batch" not in data.column_names:
        return pd.DataFrame()
    frame = data.to_pandas()
    return frame[frame["batch"] == batch].reset_index(drop=True)


def text_columns(frame: pd.DataFrame) -> list[str]:
    return [
        str(c)
        for c in frame.columns
        if c not in DERIVED_COLUMNS and pd.api.types.is_string_dtype(frame[c])
    ]


def identifier_hits(frame: pd.DataFrame, identifiers: Iterable[str]) -> pd.Series:
    """Per row, how many text cells contain one of ``identifiers`` (case-insensitive)."""
    words = sorted({i.strip() for i in identifiers if len(i.strip()) >= MIN_IDENTIFIER_CHARS})
    hits = pd.Series(np.zeros(len(frame), dtype=np.int64), index=frame.index)
    if not words:
        return hits
    pattern = "|".join(re.escape(word) for word in words)
    for column in text_columns(frame):
        found = frame[column].astype("string").str.contains(pattern, case=False, regex=True)
        hits += found.fillna(False).astype(np.int64)
    return hits


def series_frame(instances: pd.DataFrame) -> pd.DataFrame:
    """One row per series: its slice count and how far slice gaps stray from their median.

    Repeated positions (echoes, phases) are collapsed first; a series with fewer than three
    distinct positions has no spacing to judge (null deviation, which GX leaves out).
    """
    rows = []
    if not {"series_uid", "slice_position", "key"} <= set(instances.columns):
        return pd.DataFrame()
    for series_uid, group in instances.groupby("series_uid", sort=True):
        positions = np.unique(group["slice_position"].dropna().astype(float).round(3))
        gaps = np.diff(positions)
        median = float(np.median(gaps)) if len(positions) >= 3 else None
        deviation = float(np.max(np.abs(gaps - median))) if median is not None else None
        rows.append(
            {
                "key": str(group["key"].iloc[0]).rsplit("/", 1)[0] + "/",
                "series_uid": str(series_uid),
                "modality": str(group["modality"].iloc[0]) if "modality" in group else "",
                "slices": len(group),
                "spacing_median_mm": median,
                "spacing_deviation_mm": deviation,
            }
        )
    return pd.DataFrame(rows)


def batch_frames(
    store: Store, batch: str, identifiers: Sequence[str] = ()
) -> dict[str, pd.DataFrame]:
    """The frames the suites run on; frames without rows are left out."""
    frames: dict[str, pd.DataFrame] = {}
    instances = batch_frame(store, "instances", batch)
    if len(instances):
        instances["phi_identifier_hits"] = identifier_hits(instances, identifiers)
        frames["instances"] = instances
        series = series_frame(instances)
        if len(series):
            frames["series"] = series
    slides = batch_frame(store, "slides", batch)
    if len(slides):
        slides["phi_identifier_hits"] = identifier_hits(slides, identifiers)
        frames["slides"] = slides
    return frames


def expectation_class(name: str) -> Any:
    import great_expectations as gx

    found = getattr(gx.expectations, name, None)
    if not (isinstance(found, type) and issubclass(found, gx.expectations.Expectation)):
        raise ConfigError(f"unknown Great Expectations expectation {name!r} in the quality config")
    return found


def expectations_of(
    frame_name: str, specs: Mapping[str, ExpectationSpec], frame: pd.DataFrame
) -> list[Any]:
    """GX expectations for a frame, one per configured check (and per column when expanded)."""
    built = []
    for check, spec in specs.items():
        if not spec.enabled:
            continue
        cls = expectation_class(spec.expectation)
        columns = text_columns(frame) if spec.columns == STRING_COLUMNS else spec.columns
        for column in columns if columns is not None else [None]:
            kwargs = dict(spec.kwargs, **({"column": column} if column else {}))
            meta = {
                "mira_check": f"{check}:{column}" if column else check,
                "mira_severity": spec.severity,
                "mira_redact": spec.redact,
                "mira_frame": frame_name,
            }
            try:
                built.append(
                    cls(
                        **kwargs,
                        severity=GX_SEVERITY[spec.severity],
                        meta=meta,
                        description=spec.description or None,
                    )
                )
            except Exception as err:  # GX validates arguments with pydantic
                raise ConfigError(f"quality config {frame_name}.{check}: {err}") from err
    return built


def gx_context(root: Path) -> Any:
    """A file-mode GX context in ``root``: no analytics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suites(
    frames: Mapping[str, pd.DataFrame], suites: SuitesConfig, batch: str, workdir: Path
) -> ValidationRun:
    """Validate each frame with its suite; results land (redacted) in ``workdir``."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = gx_context(workdir)
    source = context.data_sources.add_or_update_pandas("mira-catalog")
    run_id = RunIdentifier(run_name=batch)
    for name, frame in frames.items():
        expectations = expectations_of(name, suites.get(name, {}), frame)
        if not expectations:
            continue
        # Built whole, then stored once: adding to a stored suite rewrites it per expectation.
        suite = context.suites.add_or_update(
            gx.ExpectationSuite(name=f"mira-{name}", expectations=expectations)
        )
        asset = source.add_dataframe_asset(name)
        definition = gx.ValidationDefinition(
            name=f"{name}-{batch}",
            data=asset.add_batch_definition_whole_dataframe(batch),
            suite=suite,
        )
        context.validation_definitions.add_or_update(definition)
        definition.run(
            batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT, run_id=run_id
        )
    return collect_results(workdir / "gx")


def collect_results(gx_root: Path) -> ValidationRun:
    """Redact the stored validation results, read their outcomes, gather the files for docs."""
    outcomes: list[ExpectationOutcome] = []
    files: list[tuple[str, bytes]] = []
    for path in sorted((gx_root / "uncommitted" / "validations").rglob("*.json")):
        document = json.loads(path.read_text())
        for result in document.get("results", []):
            redact(result)
            outcomes.append(outcome_of(result))
        data = json.dumps(document, indent=1, default=str).encode()
        path.write_bytes(data)
        files.append((path.relative_to(gx_root).as_posix(), data))
    for path in sorted((gx_root / "expectations").glob("*.json")):
        files.append((path.relative_to(gx_root).as_posix(), path.read_bytes()))
    return ValidationRun(tuple(outcomes), tuple(files))


def redact(result: dict[str, Any]) -> None:
    """Drop the offending values of a ``redact`` expectation, keeping counts and keys."""
    if not result.get("expectation_config", {}).get("meta", {}).get("mira_redact"):
        return
    details = result.get("result") or {}
    for field in VALUE_FIELDS:
        details.pop(field, None)
    for field in ("partial_unexpected_index_list", "unexpected_index_list"):
        if isinstance(details.get(field), list):
            details[field] = [
                {"key": entry.get("key")} if isinstance(entry, dict) else entry
                for entry in details[field]
            ]


def offending_keys(details: Mapping[str, Any]) -> tuple[str, ...]:
    entries = details.get("unexpected_index_list") or details.get("partial_unexpected_index_list")
    return tuple(str(e["key"]) for e in entries or () if isinstance(e, dict) and "key" in e)


def outcome_of(result: Mapping[str, Any]) -> ExpectationOutcome:
    """A GX expectation result (JSON) as a mira outcome with a one-line detail."""
    config = result.get("expectation_config", {})
    meta = config.get("meta") or {}
    details = result.get("result") or {}
    keys = offending_keys(details)
    unexpected = details.get("unexpected_count")
    exception = result.get("exception_info") or {}
    if not isinstance(exception.get("raised_exception"), bool):
        exception = next(iter(exception.values()), {}) if exception else {}
    if exception.get("raised_exception"):
        message = str(exception.get("exception_message") or "error").splitlines()[0]
        detail = f"could not be evaluated: {message}"
    elif result.get("success"):
        detail = "passed"
    elif unexpected is not None:
        detail = f"{unexpected} of {details.get('element_count', '?')} rows unexpected"
        if keys:
            more = len(keys) - KEYS_IN_DETAIL
            shown = ", ".join(keys[:KEYS_IN_DETAIL]) + (f" (+{more} more)" if more > 0 else "")
            detail += f"; keys: {shown}"
        if not meta.get("mira_redact") and details.get("partial_unexpected_list"):
            values = ", ".join(map(str, details["partial_unexpected_list"][:KEYS_IN_DETAIL]))
            detail += f"; values: {values}"
    else:
        detail = f"failed (observed {details.get('observed_value', 'nothing')})"
    return ExpectationOutcome(
        frame=str(meta.get("mira_frame", "")),
        check=str(meta.get("mira_check", config.get("type", "?"))),
        severity=meta.get("mira_severity", "fail"),
        passed=bool(result.get("success")),
        expectation=str(config.get("type", "")),
        unexpected=int(unexpected) if unexpected is not None else None,
        keys=keys,
        detail=detail,
    )


SITE = ("uncommitted", "data_docs", "local_site")
_EXTERNAL = r"""["']https?://[^"']*["']"""
_OFFLINE_RULES = (
    # Stylesheets and scripts from CDNs: dropped, the pages stay readable without them.
    (re.compile(rf"<link\b[^>]*href={_EXTERNAL}[^>]*>", re.I), ""),
    (re.compile(rf"<script\b[^>]*src={_EXTERNAL}[^>]*>\s*</script>", re.I | re.S), ""),
    # Inline scripts drive those libraries (tables, tabs); without them they only fail.
    (re.compile(r"<script\b[^>]*>.*?</script>", re.I | re.S), ""),
    (re.compile(rf"url\({_EXTERNAL}\)", re.I), "none"),
    (re.compile(rf"<img\b[^>]*src={_EXTERNAL}[^>]*>", re.I), ""),
    (re.compile(rf"\s(?:href|src)={_EXTERNAL}", re.I), ""),
)
OFFLINE_STYLE = """<style>
body{font-family:sans-serif;margin:1em 2em 4em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
.collapse{display:block}.sr-only,.ge-cta-footer,footer{display:none}
.fail{color:#b00020;font-weight:bold}.pass{color:#1b5e20}
</style>"""


@dataclass(frozen=True)
class DocsSite:
    """Where the Data Docs of the research store are, and how many pages they have."""

    index_key: str
    index_url: str
    local_path: str | None
    pages: int


def offline_html(text: str) -> str:
    """The page with every CDN asset and external link removed and a small style inlined."""
    for pattern, replacement in _OFFLINE_RULES:
        text = pattern.sub(replacement, text)
    return text.replace("</head>", f"{OFFLINE_STYLE}\n</head>", 1)


def _validation_pages(site: Path) -> list[tuple[str, str, str, str]]:
    """(batch, suite, run time, relative path) of each validation page, newest first."""
    pages = []
    for page in (site / "validations").rglob("*.html"):
        parts = page.relative_to(site / "validations").parts
        if len(parts) >= 4:
            pages.append((parts[-3], parts[0], parts[-2], page.relative_to(site).as_posix()))
    return sorted(pages, key=lambda p: (p[0], p[1], p[2]), reverse=False)


def index_html(site: Path, verdicts: Mapping[str, str]) -> str:
    """mira's own index: static links per batch and suite (GX's index needs JavaScript)."""
    from html import escape

    rows = []
    for batch, suite, run_time, path in _validation_pages(site):
        verdict = verdicts.get(batch, "?")
        rows.append(
            f"<tr><td>{escape(batch)}</td><td class='{escape(verdict)}'>{escape(verdict)}</td>"
            f"<td><a href='{escape(path)}'>{escape(suite)}</a></td><td>{escape(run_time)}</td></tr>"
        )
    suites = "".join(
        f"<li><a href='expectations/{escape(p.name)}'>{escape(p.stem)}</a></li>"
        for p in sorted((site / "expectations").glob("*.html"))
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>mira quality</title>"
        f"{OFFLINE_STYLE}</head><body><h1>mira quality: validation results</h1>"
        "<table><tr><th>batch</th><th>gate</th><th>suite</th><th>run</th></tr>"
        f"{''.join(rows)}</table><h2>Expectation suites</h2><ul>{suites}</ul></body></html>"
    )


def _load_results(store: Store, batches: Iterable[str], gx_root: Path) -> None:
    for batch in batches:
        prefix = f"quality/{batch}/gx/"
        for obj in store.list(prefix):
            target = gx_root / obj.key.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_bytes(obj.key))


def _publish_site(store: Store, site: Path) -> int:
    """Upload the site; unchanged static files are skipped, pages no longer built removed."""
    existing = {o.key: o.size for o in store.list(f"{layout.DATA_DOCS}/")}
    written = set()
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        key = f"{layout.DATA_DOCS}/{path.relative_to(site).as_posix()}"
        written.add(key)
        data = path.read_bytes()
        if path.suffix != ".html" and existing.get(key) == len(data):
            continue
        store.write_bytes(key, data)
    for key in set(existing) - written:
        store.delete(key)
    return sum(1 for key in written if key.endswith(".html"))


def build_data_docs(
    store: Store, batches: Sequence[str], verdicts: Mapping[str, str], workdir: Path
) -> DocsSite:
    """Build GX Data Docs from the stored results of ``batches`` and publish them offline-ready.

    The site is built in ``workdir`` with a file-mode context, each page is stripped of its
    CDN assets, the index is replaced by a static one, and everything is uploaded through
    the store under ``quality/data_docs/``.
    """
    context = gx_context(workdir)
    gx_root = workdir / "gx"
    _load_results(store, batches, gx_root)
    context.build_data_docs()
    site = gx_root.joinpath(*SITE)
    for page in site.rglob("*.html"):
        page.write_text(offline_html(page.read_text(encoding="utf-8")), encoding="utf-8")
    (site / "index.html").write_text(index_html(site, verdicts), encoding="utf-8")
    pages = _publish_site(store, site)
    key = f"{layout.DATA_DOCS}/index.html"
    local = store.filesystem_path(key) if store.is_local else None
    return DocsSite(key, store.url_of(key), local, pages)
